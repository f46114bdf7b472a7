//! iothreads (`-object iothread,id=io1`): OS threads, each running its own event loop, that
//! serve the device subscribers given to them (`-device virtio-blk-device,iothread=io1`) so
//! that a busy disk or tap does not hold up the VMM thread's loop (QMP, the console).
//!
//! An iothread is named `iothread-<id>` (as `/proc/PID/task/TID/comm` shows it, cut to 15
//! bytes), installs its own seccomp filter ([`ThreadKind::IoThread`]) before it serves anything
//! and then runs an [`EventLoop`] of its own. The VMM thread never touches that loop: it sends
//! a [`Request`] over a channel, writes the thread's wake eventfd and waits for the answer, so
//! each request has taken effect when [`IoThread::freeze`], [`IoThread::thaw`],
//! [`IoThread::rejoin`] or [`IoThread::add_device`] return. QMP `stop` depends on that: once
//! it answers, no device of an iothread runs until `cont`, and `migrate` reads their state.
//!
//! Dropping an [`IoThread`] asks the thread to end and joins it.

use crate::event_loop::{input, DeviceId, EventLoop, EventLoopError, Subscriber};
use crate::seccomp::{Seccomp, SeccompError, ThreadKind};
use event_manager::{EventOps, Events, MutEventSubscriber};
use std::os::fd::AsRawFd;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Why an iothread could not be started.
#[derive(Debug, thiserror::Error)]
pub enum IoThreadError {
    /// Its wake eventfd could not be created.
    #[error("cannot create its wake eventfd")]
    WakeEvent(#[source] std::io::Error),
    /// The OS thread could not be created.
    #[error("cannot create the thread")]
    Spawn(#[source] std::io::Error),
    /// Its event loop could not be created.
    #[error("cannot create its event loop")]
    EventLoop(#[source] EventLoopError),
    /// Its seccomp filter could not be installed.
    #[error("cannot install its seccomp filter")]
    Seccomp(#[source] SeccompError),
    /// It ended (while starting, or before a device could join it).
    #[error("the thread has ended")]
    Ended,
}

/// What the VMM thread asks of an iothread's loop.
enum Request {
    /// Serve this device subscriber (answered with its id on the thread's loop).
    AddDevice(Subscriber),
    /// Take the device off the loop and put it back ([`EventLoop::rejoin`]).
    Rejoin(DeviceId),
    /// Take every device off the loop ([`EventLoop::freeze_devices`]).
    Freeze,
    /// Put every device back ([`EventLoop::thaw_devices`]).
    Thaw,
    /// End the thread.
    Exit,
}

/// An iothread's answer: the request took effect.
enum Done {
    /// A device joined, with its id on the thread's loop.
    Added(DeviceId),
    /// Anything else.
    Done,
}

/// One running iothread, as the VMM thread holds it.
pub struct IoThread {
    id: String,
    thread_id: i32,
    requests: Sender<Request>,
    done: Receiver<Done>,
    wake: EventFd,
    handle: Option<JoinHandle<()>>,
}

impl IoThread {
    /// Starts iothread `id`: the thread installs its seccomp filter and its loop, then
    /// answers with its thread id; returns once it did.
    pub fn start(id: &str, seccomp: &Seccomp) -> Result<IoThread, IoThreadError> {
        let wake = EventFd::new(EFD_NONBLOCK).map_err(IoThreadError::WakeEvent)?;
        let thread_wake = wake.try_clone().map_err(IoThreadError::WakeEvent)?;
        let (requests, requests_rx) = channel();
        let (done_tx, done) = channel();
        let (ready_tx, ready_rx) = channel();
        let seccomp = seccomp.clone();
        let name = format!("iothread-{id}");
        let label = id.to_owned();
        let handle = std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                // Asked before the filter, which does not allow gettid.
                let thread_id = crate::vcpu::current_thread_id();
                match start_loop(thread_wake, &seccomp) {
                    Ok(events) => {
                        let _ = ready_tx.send(Ok(thread_id));
                        serve(&label, events, &requests_rx, &done_tx);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .map_err(IoThreadError::Spawn)?;
        let thread_id = match ready_rx.recv() {
            Ok(Ok(tid)) => tid,
            Ok(Err(e)) => {
                let _ = handle.join();
                return Err(e);
            }
            Err(_) => {
                let _ = handle.join();
                return Err(IoThreadError::Ended);
            }
        };
        log::info!("iothread '{id}' runs as thread {thread_id}");
        Ok(IoThread {
            id: id.to_owned(),
            thread_id,
            requests,
            done,
            wake,
            handle: Some(handle),
        })
    }

    /// The id given with `-object iothread,id=`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The OS thread id (what `/proc/PID/task/` lists).
    pub fn thread_id(&self) -> i32 {
        self.thread_id
    }

    /// Has the thread serve `subscriber`; returns its id on the thread's loop, or `None` if
    /// the thread is gone.
    pub fn add_device(&self, subscriber: Subscriber) -> Option<DeviceId> {
        match self.ask(Request::AddDevice(subscriber))? {
            Done::Added(id) => Some(id),
            Done::Done => None,
        }
    }

    /// The device `id` of this thread's loop rejoins it; returns once it did.
    pub fn rejoin(&self, id: DeviceId) {
        self.ask(Request::Rejoin(id));
    }

    /// Takes every device of the thread off its loop; returns once none runs.
    pub fn freeze(&self) {
        self.ask(Request::Freeze);
    }

    /// Puts every device of the thread back on its loop.
    pub fn thaw(&self) {
        self.ask(Request::Thaw);
    }

    /// Sends `request`, wakes the thread and waits for its answer (`None`: the thread ended).
    fn ask(&self, request: Request) -> Option<Done> {
        if self.requests.send(request).is_err() {
            log::warn!("iothread '{}' has ended", self.id);
            return None;
        }
        if let Err(e) = self.wake.write(1) {
            log::warn!("cannot wake iothread '{}': {e}", self.id);
        }
        match self.done.recv() {
            Ok(done) => Some(done),
            Err(_) => {
                log::warn!("iothread '{}' ended without answering", self.id);
                None
            }
        }
    }
}

impl Drop for IoThread {
    /// Asks the thread to end and joins it.
    fn drop(&mut self) {
        let Some(handle) = self.handle.take() else {
            return;
        };
        if self.requests.send(Request::Exit).is_ok() {
            let _ = self.wake.write(1);
        }
        if handle.join().is_err() {
            log::warn!("iothread '{}' panicked", self.id);
        }
        log::debug!("iothread '{}' ended", self.id);
    }
}

/// On the new thread: installs the filter, then builds the loop with the wake source on it.
fn start_loop(wake: EventFd, seccomp: &Seccomp) -> Result<EventLoop, IoThreadError> {
    let mut events = EventLoop::new().map_err(IoThreadError::EventLoop)?;
    events.add(Arc::new(Mutex::new(Wake(wake))));
    seccomp
        .apply(ThreadKind::IoThread, 0)
        .map_err(IoThreadError::Seccomp)?;
    Ok(events)
}

/// The thread's life: runs its loop and, after each batch of events, the requests that came.
fn serve(id: &str, mut events: EventLoop, requests: &Receiver<Request>, done: &Sender<Done>) {
    loop {
        while let Ok(request) = requests.try_recv() {
            let answer = match request {
                Request::AddDevice(subscriber) => Done::Added(events.add_device(subscriber)),
                Request::Rejoin(device) => {
                    events.rejoin(device);
                    Done::Done
                }
                Request::Freeze => {
                    events.freeze_devices();
                    Done::Done
                }
                Request::Thaw => {
                    events.thaw_devices();
                    Done::Done
                }
                Request::Exit => return,
            };
            if done.send(answer).is_err() {
                return;
            }
        }
        if let Err(e) = events.run() {
            log::error!("iothread '{id}': event loop failed: {e}");
            return;
        }
    }
}

/// The wake eventfd on the iothread's loop: a request is waiting on the channel.
struct Wake(EventFd);

impl MutEventSubscriber for Wake {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        // The count only says that requests came; the channel holds them.
        let _ = self.0.read();
    }

    fn init(&mut self, ops: &mut EventOps) {
        crate::event_loop::watch(ops, input(self.0.as_raw_fd(), 0), "the iothread wake event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// Counts the events of its eventfd, draining it each time.
    struct Counter {
        evt: EventFd,
        seen: Arc<Mutex<u32>>,
        thread: Arc<Mutex<Option<String>>>,
    }

    impl MutEventSubscriber for Counter {
        fn process(&mut self, _events: Events, _ops: &mut EventOps) {
            let _ = self.evt.read();
            *self.seen.lock().expect("lock") += 1;
            *self.thread.lock().expect("lock") = std::thread::current().name().map(String::from);
        }

        fn init(&mut self, ops: &mut EventOps) {
            crate::event_loop::watch(ops, input(self.evt.as_raw_fd(), 0), "test source");
        }
    }

    fn no_seccomp() -> Seccomp {
        let devices = crate::seccomp::DeviceSyscalls {
            vsock: crate::seccomp::VsockSyscalls::None,
            vhost_net: false,
            vhost_user: false,
            snapshot: false,
            chardev_socket: false,
        };
        Seccomp::new(false, true, devices).expect("no filters")
    }

    fn wait_for(seen: &Arc<Mutex<u32>>, n: u32) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if *seen.lock().expect("lock") >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    #[test]
    fn device_is_served_on_the_named_thread_and_frozen_until_thawed() {
        let thread = IoThread::start("t1", &no_seccomp()).expect("start");
        assert!(thread.thread_id() > 0);
        let evt = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let seen = Arc::new(Mutex::new(0));
        let name = Arc::new(Mutex::new(None));
        let counter = Counter {
            evt: evt.try_clone().expect("clone"),
            seen: seen.clone(),
            thread: name.clone(),
        };
        thread
            .add_device(Arc::new(Mutex::new(counter)))
            .expect("added");
        evt.write(1).expect("write");
        assert!(wait_for(&seen, 1), "served");
        assert_eq!(name.lock().expect("lock").as_deref(), Some("iothread-t1"));
        thread.freeze();
        evt.write(1).expect("write");
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(*seen.lock().expect("lock"), 1, "frozen");
        thread.thaw();
        assert!(wait_for(&seen, 2), "thawed");
        drop(thread);
    }
}
