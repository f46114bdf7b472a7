//! The CPUID each vCPU sees: what KVM supports, with this vCPU's APIC id and the machine's
//! topology (one socket, one thread per core), and with features this host refuses removed.

use kvm_bindings::kvm_cpuid_entry2;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_EXTENDED_FEATURES: u32 = 0x7;
const LEAF_PERF_MONITORING: u32 = 0xa;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;

const FEATURES_ECX_HYPERVISOR: u32 = 1 << 31;
const FEATURES_EDX_HTT: u32 = 1 << 28;
/// IA32_ARCH_CAPABILITIES (MSR 0x10a) enumeration; some hosts (kvm-pvm) refuse the MSR.
const EXT_FEATURES_EDX_ARCH_CAPABILITIES: u32 = 1 << 29;
const TOPOLOGY_LEVEL_SMT: u32 = 1;
const TOPOLOGY_LEVEL_CORE: u32 = 2;

/// Rewrites KVM's supported CPUID for the vCPU with `apic_id` in a machine of `cpus` vCPUs.
pub fn adjust_for_vcpu(entries: &mut [kvm_cpuid_entry2], apic_id: u8, cpus: u8) {
    for entry in entries.iter_mut() {
        match entry.function {
            LEAF_FEATURES => adjust_features(entry, apic_id, cpus),
            LEAF_CACHE_PARAMS => adjust_cache_params(entry, cpus),
            LEAF_EXTENDED_FEATURES if entry.index == 0 => {
                entry.edx &= !EXT_FEATURES_EDX_ARCH_CAPABILITIES;
            }
            LEAF_PERF_MONITORING => {
                // No virtual PMU: its MSRs are not all available everywhere.
                (entry.eax, entry.ebx, entry.ecx, entry.edx) = (0, 0, 0, 0);
            }
            LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => adjust_topology(entry, apic_id, cpus),
            _ => {}
        }
    }
}

fn adjust_features(entry: &mut kvm_cpuid_entry2, apic_id: u8, cpus: u8) {
    entry.ebx = (entry.ebx & 0x0000_ffff) | u32::from(apic_id) << 24 | u32::from(cpus) << 16;
    entry.ecx |= FEATURES_ECX_HYPERVISOR;
    if cpus > 1 {
        entry.edx |= FEATURES_EDX_HTT;
    } else {
        entry.edx &= !FEATURES_EDX_HTT;
    }
}

fn adjust_cache_params(entry: &mut kvm_cpuid_entry2, cpus: u8) {
    // EAX[31:26]: cores per package - 1; EAX[25:14]: logical CPUs sharing this cache - 1.
    let cache_level = (entry.eax >> 5) & 0x7;
    let sharing = if cache_level >= 3 {
        u32::from(cpus) - 1
    } else {
        0
    };
    entry.eax = (entry.eax & 0x3fff) | (u32::from(cpus) - 1) << 26 | (sharing & 0xfff) << 14;
}

fn adjust_topology(entry: &mut kvm_cpuid_entry2, apic_id: u8, cpus: u8) {
    let core_shift = bits_for(cpus);
    let (eax, ebx, level) = match entry.index {
        0 => (0, 1, TOPOLOGY_LEVEL_SMT),
        1 => (core_shift, u32::from(cpus), TOPOLOGY_LEVEL_CORE),
        _ => (0, 0, 0),
    };
    entry.eax = eax;
    entry.ebx = ebx;
    entry.ecx = level << 8 | (entry.index & 0xff);
    entry.edx = u32::from(apic_id);
}

/// Number of APIC-id bits needed to number `count` cores.
fn bits_for(count: u8) -> u32 {
    if count <= 1 {
        0
    } else {
        u32::BITS - (u32::from(count) - 1).leading_zeros()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            flags: 0,
            eax: 0xffff_ffff,
            ebx: 0xffff_ffff,
            ecx: 0,
            edx: 0xffff_ffff,
            padding: [0; 3],
        }
    }

    #[test]
    fn leaf_1_carries_the_apic_id_and_cpu_count() {
        let mut entries = [entry(1, 0)];
        adjust_for_vcpu(&mut entries, 3, 4);
        assert_eq!(entries[0].ebx >> 24, 3);
        assert_eq!((entries[0].ebx >> 16) & 0xff, 4);
        assert_ne!(entries[0].ecx & FEATURES_ECX_HYPERVISOR, 0);
        assert_ne!(entries[0].edx & FEATURES_EDX_HTT, 0);
    }

    #[test]
    fn arch_capabilities_enumeration_is_cleared() {
        let mut entries = [entry(7, 0)];
        adjust_for_vcpu(&mut entries, 0, 1);
        assert_eq!(entries[0].edx & EXT_FEATURES_EDX_ARCH_CAPABILITIES, 0);
        assert_ne!(entries[0].edx, 0, "other leaf 7 features stay");
    }

    #[test]
    fn topology_leaf_reports_x2apic_id_and_core_level() {
        let mut entries = [entry(0xb, 0), entry(0xb, 1), entry(0xb, 2)];
        adjust_for_vcpu(&mut entries, 1, 2);
        assert_eq!(entries[0].edx, 1);
        assert_eq!(
            (entries[1].eax, entries[1].ebx, entries[1].ecx),
            (1, 2, 0x201)
        );
        assert_eq!(entries[2].ecx, 2, "invalid level ends the enumeration");
    }

    #[test]
    fn bits_for_counts_apic_id_bits() {
        assert_eq!(
            [
                bits_for(1),
                bits_for(2),
                bits_for(3),
                bits_for(4),
                bits_for(5)
            ],
            [0, 1, 2, 2, 3]
        );
    }
}
