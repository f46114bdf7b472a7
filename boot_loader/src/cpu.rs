//! The initial vCPU state: segments, control registers, and the GDT and IDT that back them.
//!
//! The GDT is encoded from the same [`Segment`] values the machine programs into the vCPU, so
//! the descriptor cache and the table in memory agree if the guest reloads a selector.

use vm_memory::GuestMemoryMmap;

use crate::guest;
use crate::layout::{BOOT_STACK_TOP, GDT_ADDR, GDT_ENTRIES, IDT_ADDR, PML4_ADDR};

/// Code segment selector (GDT slot 2, Linux's `__BOOT_CS`).
pub const CODE_SELECTOR: u16 = 0x10;
/// Data segment selector (GDT slot 3, Linux's `__BOOT_DS`).
pub const DATA_SELECTOR: u16 = 0x18;
/// Task-state segment selector (GDT slots 4 and 5).
pub const TSS_SELECTOR: u16 = 0x20;

/// CR0.PE: protected mode.
pub const X86_CR0_PE: u64 = 1 << 0;
/// CR0.ET: extension type (always 1 on modern CPUs).
pub const X86_CR0_ET: u64 = 1 << 4;
/// CR0.PG: paging.
pub const X86_CR0_PG: u64 = 1 << 31;
/// CR4.PAE: physical address extension.
pub const X86_CR4_PAE: u64 = 1 << 5;
/// EFER.LME: long mode enable.
pub const EFER_LME: u64 = 1 << 8;
/// EFER.LMA: long mode active.
pub const EFER_LMA: u64 = 1 << 10;
/// RFLAGS with only the always-one bit 1 set (interrupts off).
pub const RFLAGS_RESERVED: u64 = 1 << 1;

/// Code segment type: execute/read, accessed.
const TYPE_CODE: u8 = 0xb;
/// Data segment type: read/write, accessed.
const TYPE_DATA: u8 = 0x3;
/// System segment type: busy TSS (32-bit in protected mode, 64-bit in long mode).
const TYPE_BUSY_TSS: u8 = 0xb;
/// Byte limit of a flat 4 GiB segment.
const FLAT_LIMIT: u32 = 0xffff_ffff;
/// Byte limit of the TSS (104 bytes, the minimum for a 32- or 64-bit TSS).
const TSS_LIMIT: u32 = 0x67;

/// The mode vCPU 0 starts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuMode {
    /// 64-bit long mode with the identity-mapped page tables (ELF vmlinux, raw vmlinux.bin).
    Long64,
    /// 32-bit protected mode, paging off (PVH, bzImage 32-bit boot protocol).
    Protected32,
}

/// A segment register as the vCPU's descriptor cache holds it (KVM's `kvm_segment`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Selector (GDT index * 8).
    pub selector: u16,
    /// Base address.
    pub base: u64,
    /// Limit in bytes, already scaled by the granularity: `0xffff_ffff` for a flat segment with
    /// `g` set. Copy it into `kvm_segment.limit` unchanged.
    pub limit: u32,
    /// The 4-bit descriptor type.
    pub type_: u8,
    /// Present bit.
    pub present: bool,
    /// Descriptor privilege level.
    pub dpl: u8,
    /// Default operation size (32-bit) bit.
    pub db: bool,
    /// Code/data (true) or system (false) descriptor.
    pub s: bool,
    /// 64-bit code segment bit.
    pub l: bool,
    /// Granularity: the descriptor's 20-bit limit counts 4 KiB pages.
    pub g: bool,
}

impl Segment {
    fn flat(selector: u16, type_: u8) -> Self {
        Self {
            selector,
            base: 0,
            limit: FLAT_LIMIT,
            type_,
            present: true,
            dpl: 0,
            db: true,
            s: true,
            l: false,
            g: true,
        }
    }

    /// The code segment of `mode`.
    pub fn code(mode: CpuMode) -> Self {
        let long = mode == CpuMode::Long64;
        Self {
            db: !long,
            l: long,
            ..Self::flat(CODE_SELECTOR, TYPE_CODE)
        }
    }

    /// The flat data segment (DS, ES, FS, GS, SS).
    pub fn data() -> Self {
        Self::flat(DATA_SELECTOR, TYPE_DATA)
    }

    /// The task-state segment (TR).
    pub fn tss() -> Self {
        Self {
            selector: TSS_SELECTOR,
            base: 0,
            limit: TSS_LIMIT,
            type_: TYPE_BUSY_TSS,
            present: true,
            dpl: 0,
            db: false,
            s: false,
            l: false,
            g: false,
        }
    }

    /// The 8-byte GDT descriptor for this segment. With `g` the limit is stored in 4 KiB units
    /// (its low 12 bits are implied ones); base bits 32..64 are not encoded.
    pub fn descriptor(&self) -> u64 {
        let raw_limit = u64::from(if self.g { self.limit >> 12 } else { self.limit });
        let base = self.base & 0xffff_ffff;
        let access = u64::from(self.type_ & 0xf)
            | u64::from(self.s) << 4
            | u64::from(self.dpl & 3) << 5
            | u64::from(self.present) << 7;
        let flags = u64::from(self.l) << 1 | u64::from(self.db) << 2 | u64::from(self.g) << 3;
        (raw_limit & 0xffff)
            | (base & 0xff_ffff) << 16
            | access << 40
            | (raw_limit >> 16 & 0xf) << 48
            | flags << 52
            | (base >> 24) << 56
    }

    /// Decodes an 8-byte GDT descriptor loaded through `selector`.
    pub fn from_descriptor(selector: u16, desc: u64) -> Self {
        let bit = |n: u32| desc >> n & 1 == 1;
        // Masked to 20 bits, so the cast is lossless.
        let raw_limit = ((desc & 0xffff) | (desc >> 48 & 0xf) << 16) as u32;
        let g = bit(55);
        Self {
            selector,
            base: (desc >> 16 & 0xff_ffff) | (desc >> 56) << 24,
            limit: if g {
                raw_limit << 12 | 0xfff
            } else {
                raw_limit
            },
            // Masked to 4 and 2 bits, so the casts are lossless.
            type_: (desc >> 40 & 0xf) as u8,
            present: bit(47),
            dpl: (desc >> 45 & 3) as u8,
            db: bit(54),
            s: bit(44),
            l: bit(53),
            g,
        }
    }
}

/// Everything the machine needs to program vCPU 0's registers and special registers.
///
/// `code` goes into CS, `data` into DS, ES, FS, GS and SS, `tss` into TR; the LDT is unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryState {
    /// The mode the vCPU starts in.
    pub mode: CpuMode,
    /// Instruction pointer: the kernel's entry point.
    pub rip: u64,
    /// Stack pointer (also a sensible RBP).
    pub rsp: u64,
    /// RSI: the zero page for the Linux boot protocols, 0 for PVH.
    pub rsi: u64,
    /// RBX: the `hvm_start_info` for PVH, 0 otherwise.
    pub rbx: u64,
    /// RFLAGS (interrupts disabled).
    pub rflags: u64,
    /// CR0.
    pub cr0: u64,
    /// CR3: the PML4 in long mode, 0 otherwise.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// EFER.
    pub efer: u64,
    /// CS.
    pub code: Segment,
    /// DS, ES, FS, GS and SS.
    pub data: Segment,
    /// TR.
    pub tss: Segment,
    /// GDTR base.
    pub gdt_base: u64,
    /// GDTR limit.
    pub gdt_limit: u16,
    /// IDTR base.
    pub idt_base: u64,
    /// IDTR limit.
    pub idt_limit: u16,
}

/// GDTR limit: six 8-byte slots.
const GDT_LIMIT: u16 = (GDT_ENTRIES * 8 - 1) as u16;
/// IDTR limit: one 8-byte descriptor.
const IDT_LIMIT: u16 = 7;

/// The entry state of `mode`, entering at `rip` with the given RSI and RBX.
pub(crate) fn entry_state(mode: CpuMode, rip: u64, rsi: u64, rbx: u64) -> EntryState {
    let (cr0, cr3, cr4, efer) = match mode {
        CpuMode::Long64 => (
            X86_CR0_PG | X86_CR0_ET | X86_CR0_PE,
            PML4_ADDR,
            X86_CR4_PAE,
            EFER_LME | EFER_LMA,
        ),
        CpuMode::Protected32 => (X86_CR0_ET | X86_CR0_PE, 0, 0, 0),
    };
    EntryState {
        mode,
        rip,
        rsp: BOOT_STACK_TOP,
        rsi,
        rbx,
        rflags: RFLAGS_RESERVED,
        cr0,
        cr3,
        cr4,
        efer,
        code: Segment::code(mode),
        data: Segment::data(),
        tss: Segment::tss(),
        gdt_base: GDT_ADDR,
        gdt_limit: GDT_LIMIT,
        idt_base: IDT_ADDR,
        idt_limit: IDT_LIMIT,
    }
}

/// The GDT for `state`: null, null, code, data, and the TSS (whose upper half, used as the
/// 16-byte system descriptor in long mode, holds base bits 32..64, all zero here).
pub(crate) fn gdt(state: &EntryState) -> [u64; GDT_ENTRIES] {
    [
        0,
        0,
        state.code.descriptor(),
        state.data.descriptor(),
        state.tss.descriptor(),
        state.tss.base >> 32,
    ]
}

/// Writes the GDT and the one-entry IDT for `state`.
pub(crate) fn write_gdt_idt(
    mem: &GuestMemoryMmap,
    state: &EntryState,
) -> Result<(), crate::BootError> {
    let bytes: Vec<u8> = gdt(state).iter().flat_map(|d| d.to_le_bytes()).collect();
    guest::write(mem, state.gdt_base, &bytes, "GDT")?;
    guest::write(mem, state.idt_base, &0u64.to_le_bytes(), "IDT")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{guest_memory, read_u64};

    fn gdt_slot(mem: &GuestMemoryMmap, selector: u16) -> u64 {
        read_u64(mem, GDT_ADDR + u64::from(selector))
    }

    #[test]
    fn long_mode_entry_enables_paging_pae_and_long_mode() {
        let s = entry_state(CpuMode::Long64, 0x100_0000, 0x7000, 0);
        assert_eq!(s.cr0, 0x8000_0011);
        assert_eq!(s.cr3, 0x9000);
        assert_eq!(s.cr4, 0x20);
        assert_eq!(s.efer, 0x500);
        assert_eq!(
            (s.rip, s.rsi, s.rsp, s.rflags),
            (0x100_0000, 0x7000, 0x8ff0, 2)
        );
        assert!(s.code.l && !s.code.db && s.code.g);
        assert_eq!((s.code.selector, s.code.type_), (0x10, 0xb));
        assert_eq!((s.data.selector, s.data.type_, s.data.db), (0x18, 3, true));
        assert_eq!((s.tss.selector, s.tss.type_, s.tss.s), (0x20, 0xb, false));
    }

    #[test]
    fn protected_mode_entry_has_paging_off_and_flat_32_bit_code() {
        let s = entry_state(CpuMode::Protected32, 0x10_0000, 0, 0x6000);
        assert_eq!((s.cr0, s.cr3, s.cr4, s.efer), (0x11, 0, 0, 0));
        assert_eq!(s.rbx, 0x6000);
        assert!(!s.code.l && s.code.db && s.code.g);
        assert_eq!((s.code.base, s.code.limit), (0, 0xffff_ffff));
        assert_eq!((s.data.base, s.data.limit), (0, 0xffff_ffff));
    }

    #[test]
    fn gdt_and_idt_registers_cover_the_tables() {
        let s = entry_state(CpuMode::Long64, 0, 0, 0);
        assert_eq!((s.gdt_base, s.gdt_limit), (0x500, 0x2f));
        assert_eq!((s.idt_base, s.idt_limit), (0x530, 7));
    }

    #[test]
    fn flat_64_bit_code_descriptor_has_the_classic_encoding() {
        assert_eq!(
            Segment::code(CpuMode::Long64).descriptor(),
            0x00af_9b00_0000_ffff
        );
        assert_eq!(
            Segment::code(CpuMode::Protected32).descriptor(),
            0x00cf_9b00_0000_ffff
        );
        assert_eq!(Segment::data().descriptor(), 0x00cf_9300_0000_ffff);
        assert_eq!(Segment::tss().descriptor(), 0x0000_8b00_0000_0067);
    }

    #[test]
    fn gdt_bytes_decode_back_to_the_segments_in_both_modes() {
        for mode in [CpuMode::Long64, CpuMode::Protected32] {
            let mem = guest_memory(4 << 20);
            let s = entry_state(mode, 0, 0, 0);
            write_gdt_idt(&mem, &s).unwrap();
            for seg in [s.code, s.data, s.tss] {
                let desc = gdt_slot(&mem, seg.selector);
                assert_eq!(
                    Segment::from_descriptor(seg.selector, desc),
                    seg,
                    "{mode:?}"
                );
            }
            assert_eq!(gdt_slot(&mem, 0), 0);
            assert_eq!(gdt_slot(&mem, 8), 0);
            assert_eq!(gdt_slot(&mem, TSS_SELECTOR + 8), 0);
            assert_eq!(read_u64(&mem, IDT_ADDR), 0);
        }
    }

    #[test]
    fn descriptor_round_trips_base_and_byte_granular_limit() {
        let seg = Segment {
            base: 0x1234_5678,
            limit: 0xabcde,
            g: false,
            ..Segment::data()
        };
        assert_eq!(
            Segment::from_descriptor(seg.selector, seg.descriptor()),
            seg
        );
    }
}
