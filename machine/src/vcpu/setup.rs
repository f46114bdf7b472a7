//! Programs a vCPU before it first runs: CPUID, MSRs, LAPIC LINT pins, and for the boot vCPU
//! the registers, segments and control registers the boot loader asked for.

use crate::cpuid;
use boot_loader::{EntryState, Segment};
use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, CpuId, Msrs};
use kvm_ioctls::{Kvm, VcpuFd};

/// A step of vCPU setup that failed.
#[derive(Debug, thiserror::Error)]
pub enum VcpuSetupError {
    /// `KVM_CREATE_VCPU` failed.
    #[error("cannot create the vCPU")]
    Create(#[source] kvm_ioctls::Error),
    /// KVM's supported CPUID could not be read.
    #[error("cannot read KVM's supported CPUID")]
    SupportedCpuid(#[source] kvm_ioctls::Error),
    /// `KVM_SET_CPUID2` failed.
    #[error("cannot set CPUID")]
    SetCpuid(#[source] kvm_ioctls::Error),
    /// KVM's MSR list could not be read.
    #[error("cannot read KVM's MSR index list")]
    MsrList(#[source] kvm_ioctls::Error),
    /// The MSR array could not be built.
    #[error("cannot build the MSR array")]
    MsrArray(#[source] vmm_sys_util::fam::Error),
    /// `KVM_SET_MSRS` failed or set fewer MSRs than asked.
    #[error("cannot set MSRs (set {set} of {asked})")]
    SetMsrs {
        /// How many KVM accepted.
        set: usize,
        /// How many were asked.
        asked: usize,
    },
    /// A register-class ioctl failed.
    #[error("cannot set the vCPU's {what}")]
    Registers {
        /// Which registers.
        what: &'static str,
        /// The ioctl error.
        #[source]
        source: kvm_ioctls::Error,
    },
}

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MISC_ENABLE_FAST_STRING: u64 = 1;
const MTRR_ENABLE_DEFAULT_WRITEBACK: u64 = 1 << 11 | 6;

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_DELIVERY_MODE_MASK: u32 = 0x700;
const APIC_MODE_NMI: u32 = 0x4 << 8;
const APIC_MODE_EXTINT: u32 = 0x7 << 8;

/// Sets CPUID for the vCPU numbered `id` (also its APIC id) of `cpus`.
pub fn configure_cpuid(kvm: &Kvm, fd: &VcpuFd, id: u8, cpus: u8) -> Result<(), VcpuSetupError> {
    let supported = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(VcpuSetupError::SupportedCpuid)?;
    let mut entries = supported.as_slice().to_vec();
    cpuid::adjust_for_vcpu(&mut entries, id, cpus);
    let cpuid = CpuId::from_entries(&entries).map_err(VcpuSetupError::MsrArray)?;
    fd.set_cpuid2(&cpuid).map_err(VcpuSetupError::SetCpuid)
}

/// The MSRs every vCPU starts with, as (index, value).
pub fn boot_msrs() -> Vec<(u32, u64)> {
    vec![
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_DEFAULT_WRITEBACK),
    ]
}

/// The MSRs KVM lists (`KVM_GET_MSR_INDEX_LIST`): read once per VM, for every vCPU's boot
/// MSRs and for snapshots.
pub fn supported_msrs(kvm: &Kvm) -> Result<Vec<u32>, VcpuSetupError> {
    kvm.get_msr_index_list()
        .map(|list| list.as_slice().to_vec())
        .map_err(VcpuSetupError::MsrList)
}

/// Sets the boot MSRs that KVM lists as `supported`; others are skipped, never forced.
pub fn configure_msrs(fd: &VcpuFd, supported: &[u32]) -> Result<(), VcpuSetupError> {
    let entries: Vec<kvm_msr_entry> = boot_msrs()
        .into_iter()
        .filter(|(index, _)| supported.contains(index))
        .map(|(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&entries).map_err(VcpuSetupError::MsrArray)?;
    let set = fd
        .set_msrs(&msrs)
        .map_err(|source| VcpuSetupError::Registers {
            what: "MSRs",
            source,
        })?;
    if set != entries.len() {
        return Err(VcpuSetupError::SetMsrs {
            set,
            asked: entries.len(),
        });
    }
    Ok(())
}

/// Routes LINT0 as ExtINT (the PIC) and LINT1 as NMI, as a PC BIOS leaves them.
pub fn configure_lapic(fd: &VcpuFd) -> Result<(), VcpuSetupError> {
    let err = |source| VcpuSetupError::Registers {
        what: "local APIC",
        source,
    };
    let mut lapic = fd.get_lapic().map_err(err)?;
    let set_mode = |regs: &mut [std::os::raw::c_char], offset: usize, mode: u32| {
        let mut bytes = [0u8; 4];
        for (b, r) in bytes.iter_mut().zip(&regs[offset..offset + 4]) {
            *b = *r as u8;
        }
        let value = (u32::from_le_bytes(bytes) & !APIC_DELIVERY_MODE_MASK) | mode;
        for (r, b) in regs[offset..offset + 4].iter_mut().zip(value.to_le_bytes()) {
            *r = b as std::os::raw::c_char;
        }
    };
    set_mode(&mut lapic.regs, APIC_LVT0, APIC_MODE_EXTINT);
    set_mode(&mut lapic.regs, APIC_LVT1, APIC_MODE_NMI);
    fd.set_lapic(&lapic).map_err(err)
}

/// x87 control word and MXCSR as after FNINIT / reset.
pub fn configure_fpu(fd: &VcpuFd) -> Result<(), VcpuSetupError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    fd.set_fpu(&fpu)
        .map_err(|source| VcpuSetupError::Registers {
            what: "FPU",
            source,
        })
}

/// Puts the boot vCPU in the state the boot loader returned.
pub fn configure_boot_state(fd: &VcpuFd, entry: &EntryState) -> Result<(), VcpuSetupError> {
    let regs = kvm_regs {
        rip: entry.rip,
        rsp: entry.rsp,
        rbp: entry.rsp,
        rsi: entry.rsi,
        rbx: entry.rbx,
        rflags: entry.rflags,
        ..Default::default()
    };
    fd.set_regs(&regs)
        .map_err(|source| VcpuSetupError::Registers {
            what: "registers",
            source,
        })?;
    let err = |source| VcpuSetupError::Registers {
        what: "special registers",
        source,
    };
    let mut sregs = fd.get_sregs().map_err(err)?;
    let code = kvm_segment_from(&entry.code);
    let data = kvm_segment_from(&entry.data);
    sregs.cs = code;
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    sregs.tr = kvm_segment_from(&entry.tss);
    sregs.gdt.base = entry.gdt_base;
    sregs.gdt.limit = entry.gdt_limit;
    sregs.idt.base = entry.idt_base;
    sregs.idt.limit = entry.idt_limit;
    sregs.cr0 = entry.cr0;
    sregs.cr3 = entry.cr3;
    sregs.cr4 = entry.cr4;
    sregs.efer = entry.efer;
    fd.set_sregs(&sregs).map_err(err)
}

/// Converts the boot loader's segment description to KVM's.
pub fn kvm_segment_from(seg: &Segment) -> kvm_segment {
    kvm_segment {
        base: seg.base,
        limit: seg.limit,
        selector: seg.selector,
        type_: seg.type_,
        present: u8::from(seg.present),
        dpl: seg.dpl,
        db: u8::from(seg.db),
        s: u8::from(seg.s),
        l: u8::from(seg.l),
        g: u8::from(seg.g),
        avl: 0,
        unusable: u8::from(!seg.present),
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_msrs_never_include_arch_capabilities() {
        assert!(boot_msrs().iter().all(|(index, _)| *index != 0x10a));
    }

    #[test]
    fn segment_conversion_keeps_every_attribute() {
        let seg = Segment {
            selector: 0x10,
            base: 0,
            limit: 0xfffff,
            type_: 0xb,
            present: true,
            dpl: 0,
            db: false,
            s: true,
            l: true,
            g: true,
        };
        let k = kvm_segment_from(&seg);
        assert_eq!(
            (k.selector, k.type_, k.present, k.s, k.l, k.g, k.db),
            (0x10, 0xb, 1, 1, 1, 1, 0)
        );
        assert_eq!(k.unusable, 0);
    }
}
