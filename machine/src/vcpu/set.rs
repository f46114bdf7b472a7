//! The machine's vCPU threads as one set: pause and resume them (with the guest clock frozen
//! in between, so guest time does not jump), and ask them to leave at the end.

use super::{Request, SavedVcpu, VcpuControl, VcpuHandle};
use kvm_bindings::kvm_clock_data;
use kvm_ioctls::VmFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long [`VcpuSet::pause`] waits for every vCPU to leave the guest.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long vCPU threads get to leave after the machine stops.
const VCPU_EXIT_GRACE: Duration = Duration::from_millis(500);

/// The vCPU threads, their run/pause/exit control and the guest clock saved while paused.
pub struct VcpuSet {
    vm: Arc<VmFd>,
    control: Arc<VcpuControl>,
    handles: Vec<VcpuHandle>,
    count: u8,
    paused: bool,
    frozen_clock: Option<kvm_clock_data>,
}

impl VcpuSet {
    /// A set of `count` vCPUs of `vm`, obeying `control`, before their threads start.
    pub fn new(vm: Arc<VmFd>, control: Arc<VcpuControl>, count: u8) -> Self {
        Self {
            vm,
            control,
            handles: Vec::with_capacity(usize::from(count)),
            count,
            paused: false,
            frozen_clock: None,
        }
    }

    /// Adds a started vCPU thread.
    pub fn push(&mut self, handle: VcpuHandle) {
        self.handles.push(handle);
    }

    /// The started vCPU threads.
    pub fn handles(&self) -> &[VcpuHandle] {
        &self.handles
    }

    /// How many vCPUs the machine has.
    pub fn count(&self) -> u8 {
        self.count
    }

    /// Whether [`VcpuSet::pause`] parked them.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Kicks every vCPU out of the guest and parks it, then freezes the guest clock; `false`
    /// (and running again) when they did not all stop in time.
    pub fn pause(&mut self) -> bool {
        if self.paused {
            return true;
        }
        self.control.request(Request::Pause);
        self.kick_all();
        let running = self.handles.iter().filter(|v| !v.is_finished()).count();
        if !self.control.wait_paused(running, PAUSE_TIMEOUT) {
            self.control.request(Request::Run);
            return false;
        }
        self.frozen_clock = match self.vm.get_clock() {
            Ok(clock) => Some(clock),
            Err(err) => {
                log::warn!("cannot read the guest clock: {err}");
                None
            }
        };
        self.paused = true;
        true
    }

    /// The VM.
    pub fn vm(&self) -> &VmFd {
        &self.vm
    }

    /// The VM, shared (for a thread that outlives a borrow of the set).
    pub fn vm_shared(&self) -> Arc<VmFd> {
        Arc::clone(&self.vm)
    }

    /// The guest clock read when the vCPUs were parked.
    pub fn frozen_clock(&self) -> Option<kvm_clock_data> {
        self.frozen_clock
    }

    /// Has each parked vCPU save its state (see [`VcpuControl::save_parked`]).
    pub fn save_states(&self, msr_list: Vec<u32>, timeout: Duration) -> Option<Vec<SavedVcpu>> {
        if !self.paused {
            return None;
        }
        let running = self.handles.iter().filter(|v| !v.is_finished()).count();
        self.control.save_parked(running, msr_list, timeout)
    }

    /// Restores the guest clock and lets the vCPUs run again.
    pub fn resume(&mut self) {
        if !self.paused {
            return;
        }
        if let Some(clock) = self.frozen_clock.take() {
            let restore = kvm_clock_data {
                clock: clock.clock,
                ..Default::default()
            };
            if let Err(err) = self.vm.set_clock(&restore) {
                log::warn!("cannot restore the guest clock: {err}");
            }
        }
        self.control.request(Request::Run);
        self.paused = false;
    }

    /// Asks every vCPU thread to leave and waits a little for them.
    pub fn stop(&self) {
        self.control.request(Request::Exit);
        let deadline = Instant::now() + VCPU_EXIT_GRACE;
        while Instant::now() < deadline && !self.handles.iter().all(VcpuHandle::is_finished) {
            self.kick_all();
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn kick_all(&self) {
        self.handles
            .iter()
            .filter(|v| !v.is_finished())
            .for_each(VcpuHandle::kick);
    }
}
