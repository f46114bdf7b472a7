//! Setup steps that mostly wait on the host kernel run on helper threads while the main thread
//! goes on building the machine. On a kvm-pvm host, registering a KVM memory slot waits about
//! 5 ms for an SRCU grace period and creating the PIT starts a kernel thread (0.2-3 ms); neither
//! is needed before a vCPU runs, so they overlap the loading of the kernel and the setup of the
//! devices and vCPUs. [`Background::finish`] joins them before the first vCPU starts.

use crate::error::MachineError;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

type Job = JoinHandle<Result<(), MachineError>>;

/// The setup steps running in the background.
#[derive(Default)]
pub struct Background {
    jobs: Mutex<Vec<Job>>,
    /// Set by [`Background::finish`]: from then on steps run where they are asked for.
    finished: AtomicBool,
}

impl Background {
    /// Runs `step` on a helper thread named `name` if the machine is still being built, or
    /// right here (after the steps still running) once [`Background::finish`] was called.
    pub fn run(
        &self,
        name: &str,
        step: impl FnOnce() -> Result<(), MachineError> + Send + 'static,
    ) -> Result<(), MachineError> {
        if self.finished.load(Ordering::SeqCst) {
            // Steps stay in order: what still runs in the background is done first.
            self.finish()?;
            return step();
        }
        let job = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(step)
            .map_err(MachineError::SetupThread)?;
        self.lock().push(job);
        Ok(())
    }

    /// Waits for every step started in the background; later steps run synchronously. The
    /// first error wins.
    pub fn finish(&self) -> Result<(), MachineError> {
        self.finished.store(true, Ordering::SeqCst);
        let jobs = std::mem::take(&mut *self.lock());
        let mut result = Ok(());
        for job in jobs {
            let outcome = job.join().unwrap_or_else(|_| {
                Err(MachineError::SetupThread(std::io::Error::other(
                    "a setup thread panicked",
                )))
            });
            if result.is_ok() {
                result = outcome;
            }
        }
        result
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Job>> {
        self.jobs.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    #[test]
    fn steps_run_in_the_background_until_finish_then_in_place() {
        let background = Background::default();
        let done = Arc::new(AtomicUsize::new(0));
        for _ in 0..3 {
            let done = done.clone();
            background
                .run("step", move || {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    done.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                })
                .expect("spawned");
        }
        background.finish().expect("all fine");
        assert_eq!(
            done.load(Ordering::SeqCst),
            3,
            "finish waited for every step"
        );
        let here = std::thread::current().id();
        background
            .run("late", move || {
                assert_eq!(std::thread::current().id(), here, "runs in place");
                Ok(())
            })
            .expect("in place");
    }

    #[test]
    fn the_first_error_is_reported_by_finish() {
        let background = Background::default();
        background
            .run("ok", || Ok(()))
            .and_then(|()| {
                background.run("bad", || {
                    Err(MachineError::SetupThread(std::io::Error::other("first")))
                })
            })
            .expect("spawned");
        let err = background.finish().expect_err("the error comes back");
        assert!(matches!(err, MachineError::SetupThread(_)), "{err}");
    }
}
