//! The Intel MultiProcessor Specification 1.4 table: how the guest finds its CPUs, IOAPIC and
//! interrupt routing without ACPI.
//!
//! The floating pointer sits at [`MPTABLE_ADDR`] (in the last KiB of base memory, where Linux
//! scans for it) and is followed by the configuration table; both must end below
//! [`MPTABLE_END`].

use vm_memory::GuestMemoryMmap;

use crate::bytes::{checksum, put, put_u16, put_u32};
use crate::layout::{MPTABLE_ADDR, MPTABLE_END};
use crate::{guest, BootError};

/// Size of the floating pointer structure.
const FLOATING_SIZE: usize = 16;
/// Size of the configuration table header.
const HEADER_SIZE: usize = 44;
/// Size of a processor entry.
const PROCESSOR_SIZE: usize = 20;
/// Size of the bus, IOAPIC, I/O interrupt and local interrupt entries.
const SMALL_ENTRY_SIZE: usize = 8;
/// IOAPIC pins, each with an I/O interrupt entry.
pub(crate) const IOAPIC_PINS: u8 = 24;
/// Everything but the processor entries: pointer, header, bus, IOAPIC, interrupts, 2 local.
const FIXED_SIZE: usize =
    FLOATING_SIZE + HEADER_SIZE + SMALL_ENTRY_SIZE * (2 + IOAPIC_PINS as usize + 2);
/// The most vCPUs whose processor entries fit in the room below [`MPTABLE_END`].
pub const MAX_CPUS: u8 =
    (((MPTABLE_END - MPTABLE_ADDR) as usize - FIXED_SIZE) / PROCESSOR_SIZE) as u8;

// The machine offers up to 32 vCPUs; the EBDA room must hold them.
const _: () = assert!(MAX_CPUS >= 32);

/// MP specification revision 1.4.
const SPEC_REV: u8 = 4;
/// Entry types.
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
/// Interrupt types.
const INT_VECTORED: u8 = 0;
const INT_NMI: u8 = 1;
const INT_EXTINT: u8 = 3;
/// Local APIC version of an integrated xAPIC, as KVM reports it.
const LAPIC_VERSION: u8 = 0x14;
/// IOAPIC version, as KVM's in-kernel IOAPIC reports it.
const IOAPIC_VERSION: u8 = 0x11;
/// Processor flags: enabled, bootstrap processor.
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
/// CPU signature: family 6, model 0, stepping 0.
const CPU_SIGNATURE: u32 = 0x600;
/// CPUID.1:EDX feature flags: FPU and on-chip APIC.
const CPU_FEATURES: u32 = 1 << 0 | 1 << 9;
/// The ISA bus's id.
const ISA_BUS: u8 = 0;
/// Local interrupt destination meaning every local APIC.
const ALL_LAPICS: u8 = 0xff;

/// Rejects a vCPU count the table cannot describe.
pub(crate) fn check_cpus(cpus: u8) -> Result<(), BootError> {
    match cpus {
        0 => Err(BootError::NoCpus),
        n if n > MAX_CPUS => Err(BootError::MpTableTooLarge {
            cpus,
            max: MAX_CPUS,
            start: MPTABLE_ADDR,
            end: MPTABLE_END,
        }),
        _ => Ok(()),
    }
}

/// A processor entry for the vCPU with local APIC id `id`.
fn processor(id: u8) -> [u8; PROCESSOR_SIZE] {
    let mut e = [0u8; PROCESSOR_SIZE];
    e[0] = ENTRY_PROCESSOR;
    e[1] = id;
    e[2] = LAPIC_VERSION;
    e[3] = CPU_ENABLED | if id == 0 { CPU_BSP } else { 0 };
    put_u32(&mut e, 4, CPU_SIGNATURE);
    put_u32(&mut e, 8, CPU_FEATURES);
    e
}

/// An 8-byte interrupt entry: type, interrupt type, flags 0 (conforming polarity and trigger),
/// source bus and IRQ, destination (IO)APIC and pin.
fn interrupt(entry: u8, kind: u8, src_irq: u8, dst: u8, dst_pin: u8) -> [u8; SMALL_ENTRY_SIZE] {
    [entry, kind, 0, 0, ISA_BUS, src_irq, dst, dst_pin]
}

/// The configuration table's entries.
fn entries(cpus: u8, ioapic_id: u8, ioapic_addr: u32) -> Vec<u8> {
    let mut body = Vec::new();
    for id in 0..cpus {
        body.extend_from_slice(&processor(id));
    }
    body.extend_from_slice(&[ENTRY_BUS, ISA_BUS, b'I', b'S', b'A', b' ', b' ', b' ']);
    body.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, CPU_ENABLED]);
    body.extend_from_slice(&ioapic_addr.to_le_bytes());
    // Like Firecracker, ISA IRQ i goes to IOAPIC pin i for all 24 pins: KVM's default routing
    // sends GSI i to pin i, and its in-kernel PIT raises GSI 0, so the timer is on pin 0 (not
    // pin 2 as on PC firmware).
    for pin in 0..IOAPIC_PINS {
        body.extend_from_slice(&interrupt(
            ENTRY_IO_INTERRUPT,
            INT_VECTORED,
            pin,
            ioapic_id,
            pin,
        ));
    }
    // The PIC's output reaches the BSP's LINT0 (virtual wire); NMIs reach every LINT1.
    body.extend_from_slice(&interrupt(ENTRY_LOCAL_INTERRUPT, INT_EXTINT, 0, 0, 0));
    body.extend_from_slice(&interrupt(ENTRY_LOCAL_INTERRUPT, INT_NMI, 0, ALL_LAPICS, 1));
    body
}

/// The configuration table ("PCMP" header and entries) with its checksum.
fn config_table(cpus: u8, ioapic_addr: u32, lapic_addr: u32) -> Vec<u8> {
    // An id no vCPU uses (they have 0..cpus); cpus <= MAX_CPUS keeps it within u8.
    let ioapic_id = cpus + 1;
    let body = entries(cpus, ioapic_id, ioapic_addr);
    let mut table = vec![0u8; HEADER_SIZE];
    put(&mut table, 0, b"PCMP");
    // Bounded by the 1 KiB room, so it fits u16.
    put_u16(&mut table, 4, (HEADER_SIZE + body.len()) as u16);
    table[6] = SPEC_REV;
    put(&mut table, 8, b"NIMBUS  ");
    put(&mut table, 16, b"MICROVM     ");
    // Entry count: processors, bus, IOAPIC, I/O interrupts, 2 local interrupts.
    put_u16(
        &mut table,
        34,
        u16::from(cpus) + 2 + u16::from(IOAPIC_PINS) + 2,
    );
    put_u32(&mut table, 36, lapic_addr);
    table.extend_from_slice(&body);
    table[7] = checksum(&table);
    table
}

/// The floating pointer structure pointing at a configuration table at `table_addr`.
fn floating_pointer(table_addr: u32) -> [u8; FLOATING_SIZE] {
    let mut fp = [0u8; FLOATING_SIZE];
    put(&mut fp, 0, b"_MP_");
    put_u32(&mut fp, 4, table_addr);
    fp[8] = 1; // length in 16-byte units
    fp[9] = SPEC_REV;
    // Feature byte 1 = 0: a configuration table is present. Bytes 2..5 = 0: no IMCR.
    fp[10] = checksum(&fp);
    fp
}

/// The floating pointer followed by the configuration table, as written at [`MPTABLE_ADDR`].
pub(crate) fn build(cpus: u8, ioapic_addr: u32, lapic_addr: u32) -> Result<Vec<u8>, BootError> {
    check_cpus(cpus)?;
    // MPTABLE_ADDR is below 1 MiB, so it fits u32.
    let mut bytes = floating_pointer((MPTABLE_ADDR as usize + FLOATING_SIZE) as u32).to_vec();
    bytes.extend_from_slice(&config_table(cpus, ioapic_addr, lapic_addr));
    Ok(bytes)
}

/// Writes the MP table for `cpus` vCPUs.
pub(crate) fn write(
    mem: &GuestMemoryMmap,
    cpus: u8,
    ioapic_addr: u32,
    lapic_addr: u32,
) -> Result<(), BootError> {
    let bytes = build(cpus, ioapic_addr, lapic_addr)?;
    guest::write(mem, MPTABLE_ADDR, &bytes, "MP table")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bytes::{read_u16, read_u32};

    const IOAPIC: u32 = 0xfec0_0000;
    const LAPIC: u32 = 0xfee0_0000;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b))
    }

    /// The configuration table's entries, split by their type's size.
    fn parse_entries(table: &[u8]) -> Vec<&[u8]> {
        let mut entries = Vec::new();
        let mut pos = HEADER_SIZE;
        while pos < table.len() {
            let len = if table[pos] == ENTRY_PROCESSOR {
                PROCESSOR_SIZE
            } else {
                SMALL_ENTRY_SIZE
            };
            entries.push(&table[pos..pos + len]);
            pos += len;
        }
        entries
    }

    fn table(cpus: u8) -> Vec<u8> {
        let bytes = build(cpus, IOAPIC, LAPIC).unwrap();
        let len = usize::from(read_u16(&bytes, 16 + 4).unwrap());
        bytes[16..16 + len].to_vec()
    }

    #[test]
    fn floating_pointer_checksums_to_zero_and_points_at_the_table() {
        let bytes = build(4, IOAPIC, LAPIC).unwrap();
        assert_eq!(&bytes[..4], b"_MP_");
        assert_eq!(sum(&bytes[..16]), 0);
        assert_eq!(read_u32(&bytes, 4), Some(0x9fc10));
        assert_eq!((bytes[8], bytes[9], bytes[11]), (1, 4, 0));
    }

    #[test]
    fn configuration_table_checksums_to_zero_over_its_length() {
        let bytes = build(4, IOAPIC, LAPIC).unwrap();
        let table = table(4);
        assert_eq!(&table[..4], b"PCMP");
        assert_eq!(
            table.len(),
            bytes.len() - 16,
            "length covers the whole base table"
        );
        assert_eq!(sum(&table), 0);
        assert_eq!(&table[8..16], b"NIMBUS  ");
        assert_eq!(&table[16..28], b"MICROVM     ");
        assert_eq!(read_u32(&table, 36), Some(LAPIC));
    }

    #[test]
    fn one_processor_entry_per_vcpu_with_ids_in_order_and_bsp_first() {
        let table = table(5);
        let cpus: Vec<_> = parse_entries(&table)
            .into_iter()
            .filter(|e| e[0] == ENTRY_PROCESSOR)
            .collect();
        assert_eq!(cpus.len(), 5);
        for (i, cpu) in cpus.iter().enumerate() {
            assert_eq!(usize::from(cpu[1]), i);
            assert_eq!(cpu[2], 0x14);
            assert_eq!(cpu[3], if i == 0 { 3 } else { 1 });
        }
    }

    #[test]
    fn entry_count_matches_the_entries() {
        let table = table(3);
        assert_eq!(
            usize::from(read_u16(&table, 34).unwrap()),
            parse_entries(&table).len()
        );
    }

    #[test]
    fn ioapic_entry_uses_an_id_after_the_cpus_and_the_given_address() {
        let table = table(3);
        let ioapic = parse_entries(&table)
            .into_iter()
            .find(|e| e[0] == ENTRY_IOAPIC)
            .unwrap();
        assert_eq!(ioapic[1], 4);
        assert_eq!((ioapic[2], ioapic[3]), (0x11, 1));
        assert_eq!(read_u32(ioapic, 4), Some(IOAPIC));
    }

    #[test]
    fn twenty_four_interrupt_entries_route_isa_irq_i_to_pin_i() {
        let table = table(2);
        let ints: Vec<_> = parse_entries(&table)
            .into_iter()
            .filter(|e| e[0] == ENTRY_IO_INTERRUPT)
            .collect();
        assert_eq!(ints.len(), 24);
        for (i, e) in ints.iter().enumerate() {
            assert_eq!(e, &[3, 0, 0, 0, 0, i as u8, 3, i as u8]);
        }
    }

    #[test]
    fn local_interrupts_are_extint_on_lint0_and_nmi_on_lint1() {
        let table = table(2);
        let locals: Vec<_> = parse_entries(&table)
            .into_iter()
            .filter(|e| e[0] == ENTRY_LOCAL_INTERRUPT)
            .collect();
        assert_eq!(
            locals,
            vec![&[4, 3, 0, 0, 0, 0, 0, 0], &[4, 1, 0, 0, 0, 0, 0xff, 1]]
        );
    }

    #[test]
    fn largest_table_fits_below_the_end_of_base_memory() {
        let bytes = build(MAX_CPUS, IOAPIC, LAPIC).unwrap();
        assert!(MPTABLE_ADDR + bytes.len() as u64 <= MPTABLE_END);
    }

    #[test]
    fn too_many_cpus_are_refused() {
        let err = build(MAX_CPUS + 1, IOAPIC, LAPIC).unwrap_err();
        assert!(matches!(err, BootError::MpTableTooLarge { .. }));
    }

    #[test]
    fn zero_cpus_are_refused() {
        assert!(matches!(build(0, IOAPIC, LAPIC), Err(BootError::NoCpus)));
    }
}
