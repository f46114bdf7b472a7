//! Poisoned-lock recovery, written once for the whole workspace.
//!
//! A lock is poisoned when a thread panicked while holding it. Nimbus builds with
//! `panic = "abort"`, so in the binary this never happens; in tests, and should that setting
//! change, the data behind the lock is still what its last holder left, and every user in the
//! workspace goes on with it rather than failing the VM.

use std::sync::{
    Condvar, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard,
};
use std::time::Duration;

/// Locks `mutex`, going on with the data of a holder that panicked.
pub fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Locks `lock` for reading, going on as [`lock`] does after a panic.
pub fn read<T: ?Sized>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

/// Locks `lock` for writing, going on as [`lock`] does after a panic.
pub fn write<T: ?Sized>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

/// Waits on `condvar` while `condition` holds, for at most `timeout`, going on as [`lock`]
/// does after a panic.
pub fn wait_timeout_while<'a, T, F>(
    condvar: &Condvar,
    guard: MutexGuard<'a, T>,
    timeout: Duration,
    condition: F,
) -> MutexGuard<'a, T>
where
    F: FnMut(&mut T) -> bool,
{
    condvar
        .wait_timeout_while(guard, timeout, condition)
        .map(|(guard, _)| guard)
        .unwrap_or_else(|poisoned| poisoned.into_inner().0)
}

/// The data of `mutex`, which the caller owns, going on as [`lock`] does after a panic.
pub fn get_mut<T: ?Sized>(mutex: &mut Mutex<T>) -> &mut T {
    mutex.get_mut().unwrap_or_else(PoisonError::into_inner)
}

/// Waits on `condvar`, going on as [`lock`] does after a panic.
pub fn wait<'a, T>(condvar: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    condvar.wait(guard).unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn lock_goes_on_with_the_data_of_a_holder_that_panicked() {
        let mutex = Arc::new(Mutex::new(7));
        let held = mutex.clone();
        let _ = std::thread::spawn(move || {
            let mut guard = held.lock().expect("first lock");
            *guard = 8;
            panic!("poison it");
        })
        .join();
        assert!(mutex.is_poisoned());
        assert_eq!(*lock(&mutex), 8);
    }
}
