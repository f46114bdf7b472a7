//! A deadline on every request to a vhost-user back end.
//!
//! The `vhost` crate waits for a reply as long as it takes: it retries a timed-out read, and a
//! reply shorter than its header says keeps it reading. A back end that hangs would hold the
//! asking thread (a vCPU at DRIVER_OK, the VMM thread at reconnect) for ever. So each request is
//! armed here with the socket and a deadline; one watchdog thread ([`Watchdog::serve`], which the
//! machine starts under its own seccomp list) shuts down the socket of a request that outlives
//! its deadline. The blocked read then sees the end of the stream, the request fails, and the
//! device treats the back end as gone.

use std::os::fd::RawFd;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long a back end may take to answer one request.
pub const REPLY_DEADLINE: Duration = Duration::from_secs(5);

/// One request being waited for.
struct Armed {
    key: u64,
    socket: RawFd,
    deadline: Instant,
    fired: bool,
}

#[derive(Default)]
struct State {
    armed: Vec<Armed>,
    next_key: u64,
}

/// The requests in flight to every back end, and the thread that ends those that take too long.
#[derive(Default)]
pub struct Watchdog {
    state: Mutex<State>,
    wake: Condvar,
}

impl Watchdog {
    /// A watchdog with nothing armed; nothing is enforced until a thread runs [`Self::serve`].
    pub fn new() -> Arc<Watchdog> {
        Arc::new(Watchdog::default())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Arms a deadline `limit` from now on the request being made on `socket`; the request is
    /// over when the guard drops. The caller keeps `socket` open until then: the watchdog only
    /// touches armed sockets, under its lock, and the guard disarms under the same lock.
    pub fn arm(&self, socket: RawFd, limit: Duration) -> Guard<'_> {
        let mut state = self.lock();
        let key = state.next_key;
        state.next_key += 1;
        state.armed.push(Armed {
            key,
            socket,
            deadline: Instant::now() + limit,
            fired: false,
        });
        drop(state);
        self.wake.notify_one();
        Guard { dog: self, key }
    }

    /// Shuts down the socket of each request past its deadline; never returns.
    pub fn serve(&self) -> ! {
        let mut state = self.lock();
        loop {
            let now = Instant::now();
            for armed in state.armed.iter_mut().filter(|a| !a.fired) {
                if armed.deadline <= now {
                    shut_down(armed.socket);
                    armed.fired = true;
                }
            }
            let next = state
                .armed
                .iter()
                .filter(|a| !a.fired)
                .map(|a| a.deadline)
                .min();
            state = match next {
                Some(deadline) => {
                    let wait = deadline.saturating_duration_since(now);
                    self.wake
                        .wait_timeout(state, wait)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
                None => self.wake.wait(state).unwrap_or_else(|p| p.into_inner()),
            };
        }
    }
}

/// A request's deadline, disarmed on drop.
pub struct Guard<'a> {
    dog: &'a Watchdog,
    key: u64,
}

impl Guard<'_> {
    /// Whether the deadline passed and the socket was shut down.
    pub fn fired(&self) -> bool {
        self.dog
            .lock()
            .armed
            .iter()
            .any(|a| a.key == self.key && a.fired)
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        self.dog.lock().armed.retain(|a| a.key != self.key);
    }
}

/// Ends both directions of `socket`: a blocked read returns end of stream, a write fails.
#[allow(unsafe_code)]
fn shut_down(socket: RawFd) {
    // SAFETY: shutdown(2) takes no pointer; `socket` is the open socket of an armed request
    // (see `Watchdog::arm`), and on any other descriptor the call fails without effect.
    unsafe {
        libc::shutdown(socket, libc::SHUT_RDWR);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    fn serving() -> Arc<Watchdog> {
        let dog = Watchdog::new();
        let served = dog.clone();
        std::thread::spawn(move || served.serve());
        dog
    }

    #[test]
    fn a_read_with_no_answer_ends_at_the_deadline() {
        let dog = serving();
        let (mut ours, _theirs) = UnixStream::pair().unwrap();
        let started = Instant::now();
        let guard = dog.arm(ours.as_raw_fd(), Duration::from_millis(200));
        let mut byte = [0u8; 1];
        assert_eq!(ours.read(&mut byte).unwrap(), 0, "end of stream");
        assert!(guard.fired());
        assert!(started.elapsed() >= Duration::from_millis(200));
    }

    #[test]
    fn a_request_answered_in_time_is_left_alone() {
        let dog = serving();
        let (ours, _theirs) = UnixStream::pair().unwrap();
        {
            let guard = dog.arm(ours.as_raw_fd(), Duration::from_millis(100));
            assert!(!guard.fired());
        }
        std::thread::sleep(Duration::from_millis(300));
        ours.set_nonblocking(true).unwrap();
        let err = (&ours).read(&mut [0u8; 1]).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock, "still open");
    }
}
