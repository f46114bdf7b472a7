//! Raw mode for the controlling terminal while the guest owns the console (vmm-sys-util's
//! `Terminal`, as Firecracker uses it), back to canonical mode on drop.

use std::io::{self, IsTerminal};
use vmm_sys_util::terminal::Terminal;

/// Stdin switched to raw mode (no line editing, echo or signal keys: Ctrl-C reaches the
/// guest); canonical mode is restored when dropped.
pub struct RawTerminal(());

impl RawTerminal {
    /// Switches stdin to raw mode if it is a terminal; `Ok(None)` when it is not one.
    pub fn enable_stdin() -> io::Result<Option<RawTerminal>> {
        let stdin = io::stdin();
        if !stdin.is_terminal() {
            return Ok(None);
        }
        stdin
            .lock()
            .set_raw_mode()
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
        Ok(Some(RawTerminal(())))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Err(e) = io::stdin().lock().set_canon_mode() {
            log::warn!("cannot restore the terminal: {e}");
        }
    }
}
