//! Turns one `KVM_RUN` exit into device accesses or a decision to stop.

use super::{StopReason, VcpuFault};
use address_space::AddressSpace;
use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::VcpuExit;

/// What the vCPU loop does after an exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitOutcome {
    /// Enter the guest again.
    Continue,
    /// Stop this vCPU (and the machine) for this reason.
    Stop(StopReason),
    /// `KVM_EXIT_INTERNAL_ERROR`: the caller reads the details from `kvm_run`.
    InternalError,
}

/// Dispatches `exit` through the port I/O space `pio` and the memory space `mmio`.
pub fn handle_exit(exit: VcpuExit, pio: &AddressSpace, mmio: &AddressSpace) -> ExitOutcome {
    match exit {
        VcpuExit::IoIn(port, data) => {
            if !pio.read(u64::from(port), data) {
                log::trace!("read from unassigned port {port:#x}");
            }
            ExitOutcome::Continue
        }
        VcpuExit::IoOut(port, data) => {
            if !pio.write(u64::from(port), data) {
                log::trace!("write to unassigned port {port:#x}");
            }
            ExitOutcome::Continue
        }
        VcpuExit::MmioRead(addr, data) => {
            if !mmio.read(addr, data) {
                log::debug!("read from unassigned MMIO address {addr:#x}");
            }
            ExitOutcome::Continue
        }
        VcpuExit::MmioWrite(addr, data) => {
            if !mmio.write(addr, data) {
                log::debug!("write to unassigned MMIO address {addr:#x}");
            }
            ExitOutcome::Continue
        }
        VcpuExit::Hlt | VcpuExit::IrqWindowOpen | VcpuExit::Intr => ExitOutcome::Continue,
        VcpuExit::Shutdown => ExitOutcome::Stop(StopReason::TripleFault),
        VcpuExit::SystemEvent(kind, _) => system_event(kind),
        VcpuExit::InternalError => ExitOutcome::InternalError,
        VcpuExit::FailEntry(reason, _cpu) => {
            ExitOutcome::Stop(StopReason::Fault(VcpuFault::FailEntry { reason }))
        }
        other => ExitOutcome::Stop(StopReason::Fault(VcpuFault::UnexpectedExit(format!(
            "{other:?}"
        )))),
    }
}

fn system_event(kind: u32) -> ExitOutcome {
    match kind {
        KVM_SYSTEM_EVENT_SHUTDOWN => ExitOutcome::Stop(StopReason::PowerOff),
        KVM_SYSTEM_EVENT_RESET => ExitOutcome::Stop(StopReason::Reset),
        KVM_SYSTEM_EVENT_CRASH => ExitOutcome::Stop(StopReason::Fault(VcpuFault::GuestCrash)),
        other => ExitOutcome::Stop(StopReason::Fault(VcpuFault::UnexpectedExit(format!(
            "system event {other}"
        )))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use address_space::{IoHandler, Region, SpaceKind};
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl IoHandler for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8 + 1);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    fn spaces() -> (AddressSpace, AddressSpace, Arc<Mutex<Recorder>>) {
        let rec = Arc::new(Mutex::new(Recorder::default()));
        let pio_root = Region::container("pio", 0x1_0000);
        pio_root
            .add_subregion(Region::io("rec", 8, rec.clone()), 0x3f8, 0)
            .expect("add");
        let pio = AddressSpace::new(SpaceKind::Io, pio_root).expect("pio");
        let mmio_root = Region::container("mmio", 1 << 32);
        mmio_root
            .add_subregion(Region::io("rec", 0x1000, rec.clone()), 0xd000_0000, 0)
            .expect("add");
        let mmio = AddressSpace::new(SpaceKind::Memory, mmio_root).expect("mmio");
        (pio, mmio, rec)
    }

    #[test]
    fn port_write_reaches_the_device_at_its_offset() {
        let (pio, mmio, rec) = spaces();
        let outcome = handle_exit(VcpuExit::IoOut(0x3f9, &[0x41]), &pio, &mmio);
        assert_eq!(outcome, ExitOutcome::Continue);
        assert_eq!(rec.lock().expect("lock").writes, vec![(1, vec![0x41])]);
    }

    #[test]
    fn port_read_is_filled_by_the_device() {
        let (pio, mmio, _rec) = spaces();
        let mut data = [0u8; 1];
        handle_exit(VcpuExit::IoIn(0x3fd, &mut data), &pio, &mmio);
        assert_eq!(data, [6]);
    }

    #[test]
    fn unassigned_port_reads_all_ones() {
        let (pio, mmio, _rec) = spaces();
        let mut data = [0u8; 2];
        assert_eq!(
            handle_exit(VcpuExit::IoIn(0x1234, &mut data), &pio, &mmio),
            ExitOutcome::Continue
        );
        assert_eq!(data, [0xff, 0xff]);
    }

    #[test]
    fn mmio_write_reaches_the_device() {
        let (pio, mmio, rec) = spaces();
        handle_exit(VcpuExit::MmioWrite(0xd000_0010, &[1, 2, 3, 4]), &pio, &mmio);
        assert_eq!(
            rec.lock().expect("lock").writes,
            vec![(0x10, vec![1, 2, 3, 4])]
        );
    }

    #[test]
    fn triple_fault_stops_the_machine_as_a_reset() {
        let (pio, mmio, _rec) = spaces();
        assert_eq!(
            handle_exit(VcpuExit::Shutdown, &pio, &mmio),
            ExitOutcome::Stop(StopReason::TripleFault)
        );
    }

    #[test]
    fn internal_error_is_reported_for_the_caller_to_decode() {
        let (pio, mmio, _rec) = spaces();
        assert_eq!(
            handle_exit(VcpuExit::InternalError, &pio, &mmio),
            ExitOutcome::InternalError
        );
    }

    #[test]
    fn system_events_map_to_poweroff_reset_and_crash() {
        let (pio, mmio, _rec) = spaces();
        let cases = [
            (KVM_SYSTEM_EVENT_SHUTDOWN, StopReason::PowerOff),
            (KVM_SYSTEM_EVENT_RESET, StopReason::Reset),
            (
                KVM_SYSTEM_EVENT_CRASH,
                StopReason::Fault(VcpuFault::GuestCrash),
            ),
        ];
        for (kind, reason) in cases {
            let data = [0u64; 1];
            assert_eq!(
                handle_exit(VcpuExit::SystemEvent(kind, &data), &pio, &mmio),
                ExitOutcome::Stop(reason)
            );
        }
    }

    #[test]
    fn fail_entry_is_fatal() {
        let (pio, mmio, _rec) = spaces();
        assert_eq!(
            handle_exit(VcpuExit::FailEntry(7, 0), &pio, &mmio),
            ExitOutcome::Stop(StopReason::Fault(VcpuFault::FailEntry { reason: 7 }))
        );
    }
}
