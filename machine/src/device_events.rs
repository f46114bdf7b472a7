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

    /// Which of this handler's sources the loop should start or stop watching, as decided by
    /// the `handle_event` calls since the last call (in order; the last word about a source
    /// wins). A handler uses it for backpressure: stop watching a tap while the guest has no
    /// buffers, watch it again when another of its sources says there are.
    fn watch_changes(&mut self) -> Vec<WatchChange> {
        Vec::new()
    }
}

/// Start (`watch`) or stop watching one of a handler's sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchChange {
    /// The source, as given to [`DeviceEvents::add`].
    pub source: u32,
    /// Whether the loop should watch it.
    pub watch: bool,
}

/// A shared handler.
pub type SharedHandler = Arc<Mutex<dyn EventHandler>>;

struct Source {
    fd: RawFd,
    handler: SharedHandler,
    source: u32,
    /// Whether its handler wants it watched (every source starts watched). While the
    /// machine is paused, no source is on the loop whatever this says.
    watched: bool,
}

/// Every device event source of the machine, in registration order.
#[derive(Default)]
pub struct DeviceEvents {
    sources: Vec<Source>,
    /// The VM is stopped (QMP `stop`): no source is watched and no handler runs.
    paused: bool,
}

impl DeviceEvents {
    /// Adds `fd`, which `handler` keeps open for as long as it lives; when it is readable,
    /// `handler.handle_event(source)` runs on the VMM thread.
    pub fn add(&mut self, fd: RawFd, handler: SharedHandler, source: u32) {
        self.sources.push(Source {
            fd,
            handler,
            source,
            watched: true,
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

    /// Stops (`paused`) or resumes watching every source its handler wants watched: while the
    /// VM is stopped devices process nothing; on resume the level-triggered loop reports
    /// whatever became readable meanwhile.
    pub fn set_paused(&mut self, paused: bool, events: &EventLoop) {
        if self.paused == paused {
            return;
        }
        self.paused = paused;
        for (n, s) in self.sources.iter().enumerate().filter(|(_, s)| s.watched) {
            let result = match paused {
                true => events.remove(s.fd),
                false => events.add(s.fd, Token::Device(n as u32)),
            };
            if let Err(e) = result {
                log::warn!("cannot (un)watch device event source {n} (paused={paused}): {e}");
            }
        }
        log::debug!("device event sources paused={paused}");
    }

    /// Runs the handler of source `n` (from `Token::Device(n)`), then starts or stops
    /// watching the handler's sources on `events` as it asked. Does nothing while paused (an
    /// event reported in the same wait as the pause).
    pub fn dispatch(&mut self, n: u32, events: &EventLoop) {
        if self.paused {
            return;
        }
        let Some(s) = usize::try_from(n).ok().and_then(|n| self.sources.get(n)) else {
            log::warn!("event for unknown device source {n}");
            return;
        };
        let handler = s.handler.clone();
        let changes = {
            let mut h = handler.lock().unwrap_or_else(|p| p.into_inner());
            h.handle_event(s.source);
            h.watch_changes()
        };
        for change in changes {
            self.apply(&handler, change, events);
        }
    }

    fn apply(&mut self, handler: &SharedHandler, change: WatchChange, events: &EventLoop) {
        let found = self
            .sources
            .iter_mut()
            .enumerate()
            .find(|(_, s)| Arc::ptr_eq(&s.handler, handler) && s.source == change.source);
        let Some((n, s)) = found else {
            log::warn!(
                "a device asked to (un)watch its unknown source {}",
                change.source
            );
            return;
        };
        if s.watched == change.watch {
            return;
        }
        if self.paused {
            s.watched = change.watch;
            return;
        }
        let result = match change.watch {
            true => events.add(s.fd, Token::Device(n as u32)),
            false => events.remove(s.fd),
        };
        match result {
            Ok(()) => {
                log::debug!("device event source {n}: watched={}", change.watch);
                s.watched = change.watch;
            }
            Err(e) => log::warn!("cannot (un)watch device event source {n}: {e}"),
        }
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

    /// `n` eventfd sources of one [`Recorder`], registered on a new loop.
    fn recorded_sources(n: usize) -> (Arc<Mutex<Recorder>>, DeviceEvents, EventLoop) {
        let evts: Vec<EventFd> = (0..n)
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
        (recorder, sources, lp)
    }

    #[test]
    fn readable_source_reaches_its_handler_with_its_number() {
        let (recorder, mut sources, lp) = recorded_sources(3);
        recorder.lock().expect("lock").evts[2]
            .write(1)
            .expect("write");
        for token in lp.wait().expect("wait") {
            let Token::Device(n) = token else {
                panic!("unexpected {token:?}")
            };
            sources.dispatch(n, &lp);
        }
        assert_eq!(recorder.lock().expect("lock").seen, vec![2]);
    }

    /// Source 0 is a "tap" that stays readable; the handler stops watching it on its event and
    /// watches it again when source 1 (a "resume" eventfd) is readable.
    struct Pausing {
        resume: EventFd,
        changes: Vec<WatchChange>,
        seen: Vec<u32>,
    }

    impl EventHandler for Pausing {
        fn handle_event(&mut self, source: u32) {
            self.seen.push(source);
            if source == 1 {
                let _ = self.resume.read();
            }
            self.changes.push(WatchChange {
                source: 0,
                watch: source == 1,
            });
        }

        fn watch_changes(&mut self) -> Vec<WatchChange> {
            std::mem::take(&mut self.changes)
        }
    }

    fn dispatch_all(sources: &mut DeviceEvents, lp: &EventLoop) -> Vec<u32> {
        let tokens = lp.wait().expect("wait");
        for token in &tokens {
            let Token::Device(n) = *token else {
                panic!("unexpected {token:?}")
            };
            sources.dispatch(n, lp);
        }
        tokens
            .iter()
            .map(|t| match t {
                Token::Device(n) => *n,
                _ => u32::MAX,
            })
            .collect()
    }

    #[test]
    fn paused_source_is_not_watched_until_its_handler_resumes_it() {
        let tap = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let resume = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let resume_fd = resume.as_raw_fd();
        let handler = Arc::new(Mutex::new(Pausing {
            resume,
            changes: Vec::new(),
            seen: Vec::new(),
        }));
        let mut sources = DeviceEvents::default();
        sources.add(tap.as_raw_fd(), handler.clone(), 0);
        sources.add(resume_fd, handler.clone(), 1);
        let lp = EventLoop::new().expect("epoll");
        sources.register(&lp).expect("register");
        tap.write(1).expect("write");
        assert_eq!(dispatch_all(&mut sources, &lp), vec![0]);
        // The tap is still readable but no longer watched: only the resume event comes.
        handler
            .lock()
            .expect("lock")
            .resume
            .write(1)
            .expect("write");
        assert_eq!(dispatch_all(&mut sources, &lp), vec![1]);
        // Watched again, and still readable.
        assert_eq!(dispatch_all(&mut sources, &lp), vec![0]);
        assert_eq!(handler.lock().expect("lock").seen, vec![0, 1, 0]);
    }

    #[test]
    fn paused_sources_are_not_dispatched_until_resumed() {
        let (recorder, mut sources, lp) = recorded_sources(2);
        sources.set_paused(true, &lp);
        assert!(sources.paused);
        recorder.lock().expect("lock").evts[1]
            .write(1)
            .expect("write");
        // Nothing is watched: a sentinel fd is the only thing the loop reports.
        let sentinel = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        lp.add(sentinel.as_raw_fd(), Token::Stdin).expect("add");
        sentinel.write(1).expect("write");
        assert_eq!(lp.wait().expect("wait"), vec![Token::Stdin]);
        // A token from before the pause is ignored.
        sources.dispatch(1, &lp);
        assert!(recorder.lock().expect("lock").seen.is_empty());
        lp.remove(sentinel.as_raw_fd()).expect("remove");
        sources.set_paused(false, &lp);
        assert_eq!(dispatch_all(&mut sources, &lp), vec![1]);
        assert_eq!(recorder.lock().expect("lock").seen, vec![1]);
    }
}
