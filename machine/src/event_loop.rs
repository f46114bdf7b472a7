//! The VMM thread's event loop: rust-vmm's `event-manager`, which Firecracker uses too.
//!
//! Everything the VMM thread waits on is a subscriber: the machine's control sources
//! (`control.rs`), the QMP socket (`qmp_server.rs`), each virtio device's queue notifications
//! and I/O completions (`virtio_devices.rs`) and each net device's tap (`net_devices.rs`). A
//! subscriber registers its descriptors in `init` and, from inside its own `process`, adds,
//! modifies and removes them at run time through the `EventOps` it is handed (a net device
//! stops watching its tap while the guest has no receive buffers; the QMP server swaps its
//! listener for its client and back).
//!
//! Device subscribers join with [`EventLoop::add_device`] and are frozen with the VM: QMP
//! `stop` takes every one of them off the loop ([`EventLoop::freeze_devices`]) and `cont` puts
//! them back, where `init` registers whatever each has at that moment. A device whose
//! descriptors changed from outside its handler (a tap hot-plugged behind a net slot) rejoins
//! the same way ([`EventLoop::rejoin`]).
//!
//! A device given to an iothread ([`EventLoop::add_device_on`], see `iothread.rs`) is served by
//! that thread's own loop instead; freezing, thawing and rejoining reach it there, and return
//! once the iothread has done it. Each iothread runs the same [`EventLoop`], without
//! iothreads of its own.

use crate::iothread::IoThread;
use event_manager::{
    EventManager, EventOps, Events, MutEventSubscriber, SubscriberId, SubscriberOps,
};
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};
use vmm_sys_util::epoll::EventSet;

pub use event_manager::Error as EventLoopError;

/// A subscriber as the loop holds it: the owner keeps a clone to reach it between events.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// A device subscriber's place in the loop, valid for the VM's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceId(usize);

/// A device subscriber served by this loop.
struct Device {
    subscriber: Subscriber,
    /// Its id in the event manager while it is on the loop.
    joined: Option<SubscriberId>,
}

impl Device {
    /// Puts the subscriber on the loop; its `init` registers its descriptors.
    fn join(&mut self, manager: &mut EventManager<Subscriber>) {
        self.joined = Some(manager.add_subscriber(self.subscriber.clone()));
    }

    /// Takes the subscriber off the loop with all its descriptors, if it is on it.
    fn leave(&mut self, manager: &mut EventManager<Subscriber>) {
        if let Some(joined) = self.joined.take() {
            let _ = manager.remove_subscriber(joined);
        }
    }
}

/// Where a device subscriber is served.
enum Home {
    /// On this loop.
    Here(Device),
    /// On iothread `thread` (an index into the loop's iothreads), as its device `id`.
    IoThread { thread: usize, id: DeviceId },
}

/// Why a device cannot be served by the iothread it asked for.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum IoThreadRefusal {
    /// No iothread has this id.
    #[error("no iothread has id '{0}'")]
    Unknown(String),
    /// The iothread with this id has ended (it logged why).
    #[error("iothread '{0}' has ended")]
    Ended(String),
}

/// The event manager, and the device subscribers that QMP `stop` freezes.
pub struct EventLoop {
    manager: EventManager<Subscriber>,
    devices: Vec<Home>,
    frozen: bool,
    /// The iothreads devices may be given to (none on an iothread's own loop).
    iothreads: Vec<IoThread>,
}

impl EventLoop {
    /// An empty loop.
    pub fn new() -> Result<Self, EventLoopError> {
        Ok(Self {
            manager: EventManager::new()?,
            devices: Vec::new(),
            frozen: false,
            iothreads: Vec::new(),
        })
    }

    /// Adds a subscriber that stays for the VM's life (its `init` runs now).
    pub fn add(&mut self, subscriber: Subscriber) -> SubscriberId {
        self.manager.add_subscriber(subscriber)
    }

    /// The operations of subscriber `id`, to change its descriptors between events.
    pub fn ops(&mut self, id: SubscriberId) -> Result<EventOps<'_>, EventLoopError> {
        self.manager.event_ops(id)
    }

    /// Adds a device subscriber; it joins the loop now unless the devices are frozen, then at
    /// [`EventLoop::thaw_devices`].
    pub fn add_device(&mut self, subscriber: Subscriber) -> DeviceId {
        let mut device = Device {
            subscriber,
            joined: None,
        };
        if !self.frozen {
            device.join(&mut self.manager);
        }
        self.devices.push(Home::Here(device));
        DeviceId(self.devices.len() - 1)
    }

    /// Adds an iothread that devices can be given to; it is frozen with the devices of this
    /// loop and ends when the loop is dropped (or at [`EventLoop::stop_iothreads`]).
    pub fn add_iothread(&mut self, thread: IoThread) {
        if self.frozen {
            thread.freeze();
        }
        self.iothreads.push(thread);
    }

    /// The iothreads, in the order they were added.
    pub fn iothreads(&self) -> &[IoThread] {
        &self.iothreads
    }

    /// Ends every iothread (each finishes the event it is handling) and joins it: no device
    /// runs on them afterwards.
    pub fn stop_iothreads(&mut self) {
        self.iothreads.clear();
    }

    /// As [`EventLoop::add_device`], served by the iothread with id `iothread` when given.
    pub fn add_device_on(
        &mut self,
        subscriber: Subscriber,
        iothread: Option<&str>,
    ) -> Result<DeviceId, IoThreadRefusal> {
        let Some(name) = iothread else {
            return Ok(self.add_device(subscriber));
        };
        let thread = self
            .iothreads
            .iter()
            .position(|t| t.id() == name)
            .ok_or_else(|| IoThreadRefusal::Unknown(name.to_owned()))?;
        let id = self.iothreads[thread]
            .add_device(subscriber)
            .ok_or_else(|| IoThreadRefusal::Ended(name.to_owned()))?;
        self.devices.push(Home::IoThread { thread, id });
        Ok(DeviceId(self.devices.len() - 1))
    }

    /// Takes device `id` off the loop and puts it back: its `init` registers the descriptors
    /// it has now (while frozen, that happens at thaw).
    pub fn rejoin(&mut self, id: DeviceId) {
        match self.devices.get_mut(id.0) {
            Some(Home::Here(device)) => {
                if device.joined.is_some() {
                    device.leave(&mut self.manager);
                    device.join(&mut self.manager);
                }
            }
            Some(Home::IoThread { thread, id }) => {
                if let Some(thread) = self.iothreads.get(*thread) {
                    thread.rejoin(*id);
                }
            }
            None => log::warn!("rejoin of unknown device subscriber {id:?}"),
        }
    }

    /// Takes every device subscriber off the loop, and off its iothread's: no device source
    /// is watched or handled until [`EventLoop::thaw_devices`]. Returns once every iothread
    /// stopped serving its devices.
    pub fn freeze_devices(&mut self) {
        if self.frozen {
            return;
        }
        self.frozen = true;
        for home in &mut self.devices {
            if let Home::Here(device) = home {
                device.leave(&mut self.manager);
            }
        }
        for thread in &self.iothreads {
            thread.freeze();
        }
        log::debug!("device event sources frozen");
    }

    /// Puts every device subscriber back on the loop and on its iothread's; the
    /// level-triggered loops then report whatever became readable meanwhile.
    pub fn thaw_devices(&mut self) {
        if !self.frozen {
            return;
        }
        self.frozen = false;
        for home in &mut self.devices {
            if let Home::Here(device) = home {
                device.join(&mut self.manager);
            }
        }
        for thread in &self.iothreads {
            thread.thaw();
        }
        log::debug!("device event sources thawed");
    }

    /// Waits for events and hands each to its subscriber; returns how many there were (0 when
    /// a signal interrupted the wait).
    pub fn run(&mut self) -> Result<usize, EventLoopError> {
        self.manager.run()
    }

    /// As [`EventLoop::run`], waiting at most `ms` milliseconds.
    #[cfg(test)]
    pub fn run_for(&mut self, ms: i32) -> Result<usize, EventLoopError> {
        self.manager.run_with_timeout(ms)
    }
}

/// Watching `fd` for input, with `data` (a subscriber's token) coming back with its events.
pub fn input(fd: RawFd, data: u32) -> Events {
    Events::with_data_raw(fd, data, EventSet::IN)
}

/// Watching `fd` for input and, when `want_write`, for room to write.
pub fn input_output(fd: RawFd, data: u32, want_write: bool) -> Events {
    let set = if want_write {
        EventSet::IN | EventSet::OUT
    } else {
        EventSet::IN
    };
    Events::with_data_raw(fd, data, set)
}

/// Registers `events`, logging (not failing) when the loop refuses: `what` names the source.
pub fn watch(ops: &mut EventOps, events: Events, what: &str) {
    if let Err(e) = ops.add(events) {
        log::warn!("cannot watch {what}: {e}");
    }
}

/// Stops watching `events`' descriptor, logging when the loop refuses.
pub fn unwatch(ops: &mut EventOps, events: Events, what: &str) {
    if let Err(e) = ops.remove(events) {
        log::warn!("cannot stop watching {what}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    /// Drains its eventfds and records their tokens; with `remove_on_event`, removes each
    /// source from inside its own handler instead of draining it.
    struct Recorder {
        evts: Vec<EventFd>,
        seen: Vec<u32>,
        inits: usize,
        remove_on_event: bool,
    }

    impl MutEventSubscriber for Recorder {
        fn process(&mut self, events: Events, ops: &mut EventOps) {
            let n = events.data();
            self.seen.push(n);
            if self.remove_on_event {
                unwatch(ops, events, "test source");
            } else {
                let _ = self.evts[n as usize].read();
            }
        }

        fn init(&mut self, ops: &mut EventOps) {
            self.inits += 1;
            for (n, evt) in self.evts.iter().enumerate() {
                watch(ops, input(evt.as_raw_fd(), n as u32), "test source");
            }
        }
    }

    fn recorder(n: usize, remove_on_event: bool) -> Arc<Mutex<Recorder>> {
        Arc::new(Mutex::new(Recorder {
            evts: (0..n)
                .map(|_| EventFd::new(EFD_NONBLOCK).expect("eventfd"))
                .collect(),
            seen: Vec::new(),
            inits: 0,
            remove_on_event,
        }))
    }

    fn fire(r: &Arc<Mutex<Recorder>>, n: usize) {
        r.lock().expect("lock").evts[n].write(1).expect("write");
    }

    fn seen(r: &Arc<Mutex<Recorder>>) -> Vec<u32> {
        r.lock().expect("lock").seen.clone()
    }

    #[test]
    fn readable_source_reaches_its_subscriber_with_its_token() {
        let mut lp = EventLoop::new().expect("loop");
        let r = recorder(3, false);
        lp.add(r.clone());
        fire(&r, 2);
        assert_eq!(lp.run_for(1000).expect("run"), 1);
        assert_eq!(seen(&r), vec![2]);
    }

    #[test]
    fn source_removed_from_inside_its_handler_is_not_reported_again() {
        let mut lp = EventLoop::new().expect("loop");
        let r = recorder(1, true);
        lp.add(r.clone());
        fire(&r, 0);
        lp.run_for(1000).expect("run");
        // Still readable (never drained) but no longer watched.
        assert_eq!(lp.run_for(50).expect("run"), 0);
        assert_eq!(seen(&r), vec![0]);
    }

    #[test]
    fn frozen_devices_are_not_handled_until_thawed() {
        let mut lp = EventLoop::new().expect("loop");
        let device = recorder(2, false);
        let control = recorder(1, false);
        lp.add_device(device.clone());
        lp.add(control.clone());
        lp.freeze_devices();
        fire(&device, 1);
        fire(&control, 0);
        lp.run_for(1000).expect("run");
        assert_eq!(
            lp.run_for(50).expect("run"),
            0,
            "only the control source came"
        );
        assert!(seen(&device).is_empty());
        assert_eq!(seen(&control), vec![0]);
        lp.thaw_devices();
        lp.run_for(1000).expect("run");
        assert_eq!(seen(&device), vec![1]);
    }

    #[test]
    fn device_added_while_frozen_joins_at_thaw() {
        let mut lp = EventLoop::new().expect("loop");
        lp.freeze_devices();
        let device = recorder(1, false);
        lp.add_device(device.clone());
        assert_eq!(device.lock().expect("lock").inits, 0);
        fire(&device, 0);
        assert_eq!(lp.run_for(50).expect("run"), 0);
        lp.thaw_devices();
        lp.run_for(1000).expect("run");
        assert_eq!(seen(&device), vec![0]);
    }

    /// Waits up to 5 s for `r` to have seen `n` events.
    fn wait_seen(r: &Arc<Mutex<Recorder>>, n: usize) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if seen(r).len() >= n {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        false
    }

    #[test]
    fn device_on_an_iothread_is_frozen_thawed_and_rejoined_with_the_loop() {
        let mut lp = EventLoop::new().expect("loop");
        let devices = crate::seccomp::DeviceSyscalls {
            vsock: crate::seccomp::VsockSyscalls::None,
            vhost_net: false,
            vhost_user: false,
            snapshot: false,
            chardev_socket: false,
        };
        let seccomp = crate::seccomp::Seccomp::new(false, true, devices).expect("no filters");
        lp.add_iothread(IoThread::start("t", &seccomp).expect("iothread"));
        let device = recorder(1, true);
        let unknown = lp.add_device_on(device.clone(), Some("nope"));
        assert_eq!(
            unknown.expect_err("no such iothread"),
            IoThreadRefusal::Unknown("nope".to_owned())
        );
        let id = lp.add_device_on(device.clone(), Some("t")).expect("added");
        fire(&device, 0);
        assert!(wait_seen(&device, 1), "served on the iothread");
        // Removed by its handler: it comes back only by rejoining.
        lp.rejoin(id);
        assert!(wait_seen(&device, 2), "rejoined");
        lp.freeze_devices();
        lp.rejoin(id);
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert_eq!(seen(&device).len(), 2, "frozen");
        lp.thaw_devices();
        assert!(wait_seen(&device, 3), "thawed");
        lp.stop_iothreads();
        assert!(lp.iothreads().is_empty());
    }

    #[test]
    fn rejoining_device_registers_its_sources_anew() {
        let mut lp = EventLoop::new().expect("loop");
        let device = recorder(1, true);
        let id = lp.add_device(device.clone());
        fire(&device, 0);
        lp.run_for(1000).expect("run");
        assert_eq!(lp.run_for(50).expect("run"), 0, "removed by its handler");
        lp.rejoin(id);
        assert_eq!(device.lock().expect("lock").inits, 2);
        lp.run_for(1000).expect("run");
        assert_eq!(seen(&device), vec![0, 0]);
    }
}
