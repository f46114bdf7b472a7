//! The run/pause/exit state a vCPU thread obeys, shared with the machine.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::snapshot::{VcpuState, VcpuStateError};

/// What a parked vCPU thread reports for a snapshot.
pub type SavedVcpu = Result<VcpuState, (u8, VcpuStateError)>;

/// What the machine wants the vCPUs to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Run the guest.
    Run,
    /// Stay out of `KVM_RUN` until asked to run again.
    Pause,
    /// Leave the thread.
    Exit,
}

struct State {
    request: Request,
    paused: usize,
    /// Bumped for each snapshot; a parked thread that has not saved this round does.
    save_round: u64,
    /// The MSRs to read for the current round.
    msr_list: Arc<Vec<u32>>,
    /// What the threads saved this round.
    saved: Vec<SavedVcpu>,
}

/// Shared by the machine and every vCPU thread.
pub struct VcpuControl {
    state: Mutex<State>,
    changed: Condvar,
}

impl Default for VcpuControl {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                request: Request::Run,
                paused: 0,
                save_round: 0,
                msr_list: Arc::new(Vec::new()),
                saved: Vec::new(),
            }),
            changed: Condvar::new(),
        }
    }
}

// `current` and `wait_paused` are the machine's side of pause/resume, which QMP `stop`/`cont`
// drive; until then only the unit tests below use them.
#[allow(dead_code)]
impl VcpuControl {
    fn lock(&self) -> MutexGuard<'_, State> {
        address_space::sync::lock(&self.state)
    }

    /// Sets the request; the caller then kicks the vCPU threads.
    pub fn request(&self, request: Request) {
        self.lock().request = request;
        self.changed.notify_all();
    }

    /// The current request.
    pub fn current(&self) -> Request {
        self.lock().request
    }

    /// Called by a vCPU thread before `KVM_RUN`: blocks while paused, returns `Run` or `Exit`.
    pub fn wait_until_runnable(&self) -> Request {
        self.wait_until_runnable_saving(&mut |_| None)
    }

    /// As [`VcpuControl::wait_until_runnable`]; while parked, each snapshot round calls `save`
    /// with the MSRs to read and keeps what it returns for [`VcpuControl::save_parked`].
    pub fn wait_until_runnable_saving(
        &self,
        save: &mut dyn FnMut(&[u32]) -> Option<SavedVcpu>,
    ) -> Request {
        let mut state = self.lock();
        if state.request != Request::Pause {
            return state.request;
        }
        state.paused += 1;
        self.changed.notify_all();
        let mut seen = state.save_round;
        while state.request == Request::Pause {
            if state.save_round != seen {
                seen = state.save_round;
                let msr_list = Arc::clone(&state.msr_list);
                drop(state);
                let saved = save(&msr_list);
                state = self.lock();
                state.saved.extend(saved);
                self.changed.notify_all();
                continue;
            }
            state = address_space::sync::wait(&self.changed, state);
        }
        state.paused -= 1;
        self.changed.notify_all();
        state.request
    }

    /// Has each of the `count` parked vCPU threads save its state (reading `msr_list`) and
    /// returns what they saved, or `None` if not all answered within `timeout`.
    pub fn save_parked(
        &self,
        count: usize,
        msr_list: Vec<u32>,
        timeout: std::time::Duration,
    ) -> Option<Vec<SavedVcpu>> {
        let mut state = self.lock();
        state.saved.clear();
        state.msr_list = Arc::new(msr_list);
        state.save_round += 1;
        self.changed.notify_all();
        let mut state =
            address_space::sync::wait_timeout_while(&self.changed, state, timeout, |s| {
                s.request == Request::Pause && s.saved.len() < count
            });
        (state.saved.len() >= count).then(|| std::mem::take(&mut state.saved))
    }

    /// Waits until `count` vCPU threads are parked (or the request changed), up to `timeout`.
    pub fn wait_paused(&self, count: usize, timeout: std::time::Duration) -> bool {
        let state =
            address_space::sync::wait_timeout_while(&self.changed, self.lock(), timeout, |s| {
                s.request == Request::Pause && s.paused < count
            });
        state.paused >= count
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn paused_threads_park_and_resume_on_run() {
        let control = Arc::new(VcpuControl::default());
        control.request(Request::Pause);
        let c = control.clone();
        let thread = std::thread::spawn(move || c.wait_until_runnable());
        assert!(control.wait_paused(1, Duration::from_secs(5)));
        control.request(Request::Run);
        assert_eq!(thread.join().expect("join"), Request::Run);
    }

    #[test]
    fn exit_releases_paused_threads() {
        let control = Arc::new(VcpuControl::default());
        control.request(Request::Pause);
        let c = control.clone();
        let thread = std::thread::spawn(move || c.wait_until_runnable());
        assert!(control.wait_paused(1, Duration::from_secs(5)));
        control.request(Request::Exit);
        assert_eq!(thread.join().expect("join"), Request::Exit);
    }

    #[test]
    fn running_request_does_not_block() {
        let control = VcpuControl::default();
        assert_eq!(control.wait_until_runnable(), Request::Run);
    }
}
