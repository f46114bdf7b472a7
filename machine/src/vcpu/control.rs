//! The run/pause/exit state a vCPU thread obeys, shared with the machine.

use std::sync::{Condvar, Mutex, MutexGuard};

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

#[derive(Debug)]
struct State {
    request: Request,
    paused: usize,
}

/// Shared by the machine and every vCPU thread.
#[derive(Debug)]
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
        let mut state = self.lock();
        if state.request != Request::Pause {
            return state.request;
        }
        state.paused += 1;
        self.changed.notify_all();
        while state.request == Request::Pause {
            state = address_space::sync::wait(&self.changed, state);
        }
        state.paused -= 1;
        self.changed.notify_all();
        state.request
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
