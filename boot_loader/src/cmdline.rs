//! The kernel command line, written NUL-terminated at [`CMDLINE_ADDR`].

use vm_memory::GuestMemoryMmap;

use crate::layout::{CMDLINE_ADDR, CMDLINE_MAX_SIZE};
use crate::{guest, BootError};

/// The longest command line (without its NUL) for a kernel that accepts at most
/// `kernel_max` bytes, if it says.
pub(crate) fn max_len(kernel_max: Option<u32>) -> usize {
    let room = CMDLINE_MAX_SIZE - 1;
    kernel_max.map_or(room, |max| room.min(max as usize))
}

/// Writes `cmdline` and its NUL at [`CMDLINE_ADDR`]; refuses it when longer than `max` bytes.
pub(crate) fn write(mem: &GuestMemoryMmap, cmdline: &str, max: usize) -> Result<(), BootError> {
    if cmdline.len() > max {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    if cmdline.as_bytes().contains(&0) {
        return Err(BootError::CmdlineContainsNul);
    }
    let mut bytes = Vec::with_capacity(cmdline.len() + 1);
    bytes.extend_from_slice(cmdline.as_bytes());
    bytes.push(0);
    guest::write(mem, CMDLINE_ADDR, &bytes, "kernel command line")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{guest_memory, read_guest};

    #[test]
    fn command_line_is_written_nul_terminated() {
        let mem = guest_memory(4 << 20);
        write(&mem, "console=ttyS0", max_len(None)).unwrap();
        assert_eq!(read_guest(&mem, CMDLINE_ADDR, 14), b"console=ttyS0\0");
    }

    #[test]
    fn command_line_filling_the_room_exactly_is_accepted() {
        let mem = guest_memory(4 << 20);
        let cmdline = "x".repeat(CMDLINE_MAX_SIZE - 1);
        write(&mem, &cmdline, max_len(None)).unwrap();
        assert_eq!(read_guest(&mem, CMDLINE_ADDR + 4095, 1), [0]);
    }

    #[test]
    fn command_line_without_room_for_its_nul_is_refused() {
        let mem = guest_memory(4 << 20);
        let cmdline = "x".repeat(CMDLINE_MAX_SIZE);
        let err = write(&mem, &cmdline, max_len(None)).unwrap_err();
        assert!(matches!(
            err,
            BootError::CmdlineTooLong {
                len: 4096,
                max: 4095
            }
        ));
    }

    #[test]
    fn kernel_limit_below_the_room_wins() {
        assert_eq!(max_len(Some(255)), 255);
        assert_eq!(max_len(Some(0x7fff_ffff)), 4095);
    }

    #[test]
    fn command_line_with_a_nul_is_refused() {
        let mem = guest_memory(4 << 20);
        let err = write(&mem, "a\0b", max_len(None)).unwrap_err();
        assert!(matches!(err, BootError::CmdlineContainsNul));
    }
}
