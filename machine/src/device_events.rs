//! Device event sources: file descriptors a device needs the VMM thread to watch (a virtqueue's
//! ioeventfd, an I/O completion eventfd, a tap), each with the handler to call when it is
//! readable. The machine registers every source on its epoll loop as `Token::Device(n)`.

use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use crate::event_loop::{EventLoop, Token};

/// Something the VMM thread wakes when one of its event sources is readable.
pub trait EventHandler: Send {
    /// Source `source` (the number given to [`DeviceEvents::add`]) is readable; the handler
    /// reads or drains it.
    fn handle_event(&mut self, source: u32);
}

/// A shared handler.
pub type SharedHandler = Arc<Mutex<dyn EventHandler>>;

struct Source {
    fd: RawFd,
    handler: SharedHandler,
    source: u32,
}

/// Every device event source of the machine, in registration order.
#[derive(Default)]
pub struct DeviceEvents {
    sources: Vec<Source>,
}

impl DeviceEvents {
    /// Adds `fd`, which `handler` keeps open for as long as it lives; when it is readable,
    /// `handler.handle_event(source)` runs on the VMM thread.
    pub fn add(&mut self, fd: RawFd, handler: SharedHandler, source: u32) {
        self.sources.push(Source {
            fd,
            handler,
            source,
        });
    }

    /// Watches every source on `events` as `Token::Device(n)`.
    pub fn register(&self, events: &EventLoop) -> io::Result<()> {
        for (n, s) in self.sources.iter().enumerate() {
            let n = u32::try_from(n).map_err(|_| io::Error::from_raw_os_error(libc::ENOSPC))?;
            events.add(s.fd, Token::Device(n))?;
        }
        Ok(())
    }

    /// Runs the handler of source `n` (from `Token::Device(n)`).
    pub fn dispatch(&self, n: u32) {
        let Some(s) = usize::try_from(n).ok().and_then(|n| self.sources.get(n)) else {
            log::warn!("event for unknown device source {n}");
            return;
        };
        s.handler
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .handle_event(s.source);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    struct Recorder {
        evts: Vec<EventFd>,
        seen: Vec<u32>,
    }

    impl EventHandler for Recorder {
        fn handle_event(&mut self, source: u32) {
            let _ = self.evts[source as usize].read();
            self.seen.push(source);
        }
    }

    #[test]
    fn readable_source_reaches_its_handler_with_its_number() {
        let evts: Vec<EventFd> = (0..3)
            .map(|_| EventFd::new(EFD_NONBLOCK).expect("eventfd"))
            .collect();
        let fds: Vec<RawFd> = evts.iter().map(AsRawFd::as_raw_fd).collect();
        let recorder = Arc::new(Mutex::new(Recorder {
            evts,
            seen: Vec::new(),
        }));
        let mut sources = DeviceEvents::default();
        for (i, fd) in fds.iter().enumerate() {
            sources.add(*fd, recorder.clone(), i as u32);
        }
        let lp = EventLoop::new().expect("epoll");
        sources.register(&lp).expect("register");
        recorder.lock().expect("lock").evts[2]
            .write(1)
            .expect("write");
        for token in lp.wait().expect("wait") {
            let Token::Device(n) = token else {
                panic!("unexpected {token:?}")
            };
            sources.dispatch(n);
        }
        assert_eq!(recorder.lock().expect("lock").seen, vec![2]);
    }
}
