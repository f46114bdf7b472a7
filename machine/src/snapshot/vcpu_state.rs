//! One vCPU's state: read on its own thread while it is parked, written on the main thread
//! before its thread starts.

use kvm_bindings::{
    kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave, Msrs,
};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

/// Most entries KVM takes in one KVM_GET_MSRS / KVM_SET_MSRS.
const MSR_CHUNK: usize = 256;

/// Everything KVM keeps for one vCPU that a running guest depends on.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    /// The vCPU index.
    pub id: u8,
    mp_state: kvm_mp_state,
    regs: kvm_regs,
    sregs: kvm_sregs,
    xsave: kvm_xsave,
    xcrs: kvm_xcrs,
    debugregs: kvm_debugregs,
    lapic: kvm_lapic_state,
    msrs: Vec<kvm_msr_entry>,
    events: kvm_vcpu_events,
    /// The TSC frequency the guest saw, in kHz.
    pub tsc_khz: u32,
}

/// A KVM request that failed, by name.
#[derive(Debug, thiserror::Error)]
#[error("{what} failed")]
pub struct VcpuStateError {
    what: &'static str,
    #[source]
    source: kvm_ioctls::Error,
}

fn err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuStateError {
    move |source| VcpuStateError { what, source }
}

impl VcpuState {
    /// Reads the state of vCPU `id`. First an immediate-exit `KVM_RUN`: KVM finishes an I/O
    /// instruction whose exit was handled but not yet completed, so that the registers are
    /// between instructions. `msr_list` is the MSRs KVM lists; those it cannot read are left
    /// out.
    pub fn save(fd: &mut VcpuFd, id: u8, msr_list: &[u32]) -> Result<VcpuState, VcpuStateError> {
        fd.set_kvm_immediate_exit(1);
        let _ = fd.run();
        fd.set_kvm_immediate_exit(0);
        Ok(VcpuState {
            id,
            mp_state: fd.get_mp_state().map_err(err("KVM_GET_MP_STATE"))?,
            regs: fd.get_regs().map_err(err("KVM_GET_REGS"))?,
            sregs: fd.get_sregs().map_err(err("KVM_GET_SREGS"))?,
            xsave: fd.get_xsave().map_err(err("KVM_GET_XSAVE"))?,
            xcrs: fd.get_xcrs().map_err(err("KVM_GET_XCRS"))?,
            debugregs: fd.get_debug_regs().map_err(err("KVM_GET_DEBUGREGS"))?,
            lapic: fd.get_lapic().map_err(err("KVM_GET_LAPIC"))?,
            msrs: read_msrs(fd, msr_list)?,
            events: fd.get_vcpu_events().map_err(err("KVM_GET_VCPU_EVENTS"))?,
            tsc_khz: fd.get_tsc_khz().map_err(err("KVM_GET_TSC_KHZ"))?,
        })
    }

    /// Writes the state into a vCPU whose CPUID is already set, in the order KVM needs
    /// (special registers before the local APIC, MSRs before the pending events). MSRs KVM
    /// refuses here (some are read-only on some hosts) are skipped and logged.
    pub fn restore(&self, fd: &VcpuFd) -> Result<(), VcpuStateError> {
        fd.set_mp_state(self.mp_state)
            .map_err(err("KVM_SET_MP_STATE"))?;
        fd.set_regs(&self.regs).map_err(err("KVM_SET_REGS"))?;
        fd.set_sregs(&self.sregs).map_err(err("KVM_SET_SREGS"))?;
        set_xsave(fd, &self.xsave)?;
        fd.set_xcrs(&self.xcrs).map_err(err("KVM_SET_XCRS"))?;
        fd.set_debug_regs(&self.debugregs)
            .map_err(err("KVM_SET_DEBUGREGS"))?;
        fd.set_lapic(&self.lapic).map_err(err("KVM_SET_LAPIC"))?;
        write_msrs(fd, self.id, &self.msrs)?;
        fd.set_vcpu_events(&self.events)
            .map_err(err("KVM_SET_VCPU_EVENTS"))?;
        Ok(())
    }
}

/// XSAVE components whose state fits in `kvm_xsave`'s 4 KiB (x87 to PKRU); from AMX's tile
/// configuration (bit 17) on, the area is larger and KVM would read past the struct.
const XSTATE_FITS: u64 = (1 << 17) - 1;

#[allow(unsafe_code)]
fn set_xsave(fd: &VcpuFd, xsave: &kvm_xsave) -> Result<(), VcpuStateError> {
    // XSTATE_BV, the first word of the XSAVE header at byte 512.
    let xstate_bv = u64::from(xsave.region[128]) | u64::from(xsave.region[129]) << 32;
    if xstate_bv & !XSTATE_FITS != 0 {
        return Err(VcpuStateError {
            what: "KVM_SET_XSAVE (components beyond 4 KiB)",
            source: kvm_ioctls::Error::new(libc::EINVAL),
        });
    }
    // SAFETY: `xsave` is a whole `kvm_xsave`, and its header names only components whose
    // state lies within its 4 KiB (checked above), so KVM reads nothing past the struct.
    unsafe { fd.set_xsave(xsave) }.map_err(err("KVM_SET_XSAVE"))
}

/// Reads `list` in chunks; an MSR KVM cannot read (it stops at the first one) is skipped.
fn read_msrs(fd: &VcpuFd, list: &[u32]) -> Result<Vec<kvm_msr_entry>, VcpuStateError> {
    let mut out = Vec::with_capacity(list.len());
    let mut rest = list;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(MSR_CHUNK)];
        let entries: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| VcpuStateError {
            what: "KVM_GET_MSRS (array)",
            source: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        let read = fd.get_msrs(&mut msrs).map_err(err("KVM_GET_MSRS"))?;
        out.extend_from_slice(&msrs.as_slice()[..read]);
        rest = match chunk.get(read) {
            Some(index) => {
                log::debug!("MSR {index:#x} cannot be read; not saved");
                &rest[read + 1..]
            }
            None => &rest[read..],
        };
    }
    Ok(out)
}

/// Writes `entries` in chunks; an MSR KVM refuses (it stops at the first one) is skipped.
fn write_msrs(fd: &VcpuFd, id: u8, entries: &[kvm_msr_entry]) -> Result<(), VcpuStateError> {
    let mut rest = entries;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(MSR_CHUNK)];
        let msrs = Msrs::from_entries(chunk).map_err(|_| VcpuStateError {
            what: "KVM_SET_MSRS (array)",
            source: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        let set = fd.set_msrs(&msrs).map_err(err("KVM_SET_MSRS"))?;
        rest = match chunk.get(set) {
            Some(entry) => {
                log::debug!("vCPU {id}: MSR {:#x} refused at restore", entry.index);
                &rest[set + 1..]
            }
            None => &rest[set..],
        };
    }
    Ok(())
}
