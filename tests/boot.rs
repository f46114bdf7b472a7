//! Boots the test guest (guests/) in each kernel format Nimbus accepts and checks, line by
//! line, the boot information the guest found: format, command line, E820 map (also across
//! the 3 GiB MMIO hole), initrd placement and contents, and the MP table; and that a second
//! vCPU announced there really starts.

mod common;

use common::{
    expected_initrd_addr, expected_report, kvm_usable, low_ram_end, run, write_initrd,
    ExpectedInitrd, Format, VmConfig,
};

/// Not a multiple of 4 KiB, so that the initrd's start must be aligned down.
const INITRD_SIZE: u64 = 5000;
/// initrd_addr_max + 1 of hello.bzimage's setup header.
const BZIMAGE_INITRD_LIMIT: u64 = 0x8000_0000;

/// Boots `format` with `-m mem_mib` (and an initrd if asked), expects the full report, then
/// `NIMBUS-GUEST done` and exit status 0 from the guest's i8042 reset.
fn boots_and_reports(format: Format, mem_mib: u64, with_initrd: bool) {
    if !kvm_usable() {
        return;
    }
    let name = format!("{}-{mem_mib}", format.name());
    let append = format!("console=ttyS0 reboot=k panic=1 root=/dev/vda nimbus.case={name}");
    let mut config = VmConfig::new(format, mem_mib, &append);
    let mut initrd = None;
    if with_initrd {
        let size = usize::try_from(INITRD_SIZE).expect("small");
        config.initrd = Some(write_initrd(&format!("initrd-{name}.img"), size));
        let mut limit = low_ram_end(mem_mib);
        if format == Format::BzImage {
            limit = limit.min(BZIMAGE_INITRD_LIMIT);
        }
        initrd = Some(ExpectedInitrd {
            addr: expected_initrd_addr(limit, INITRD_SIZE),
            size: INITRD_SIZE,
            first: "NIMBUS-INITRD",
        });
    }

    let out = run(&config.args());

    let mut expected = expected_report(format, &append, mem_mib, initrd);
    expected.push("NIMBUS-GUEST done".into());
    out.assert_guest_output(&expected, 1);
    out.assert_exit_code(0);
}

#[test]
fn elf_kernel_is_entered_in_long_mode_with_boot_params() {
    boots_and_reports(Format::Elf, 128, true);
}

#[test]
fn pvh_kernel_is_entered_at_its_note_with_hvm_start_info() {
    boots_and_reports(Format::Pvh, 128, true);
}

#[test]
fn bzimage_is_entered_at_code32_start_with_boot_params() {
    boots_and_reports(Format::BzImage, 128, true);
}

#[test]
fn raw_kernel_is_loaded_and_entered_at_16_mib() {
    boots_and_reports(Format::Raw, 128, true);
}

#[test]
fn elf_kernel_with_3200_mib_sees_ram_split_around_the_mmio_hole_and_initrd_below_it() {
    boots_and_reports(Format::Elf, 3200, true);
}

#[test]
fn pvh_kernel_with_3200_mib_sees_ram_split_around_the_mmio_hole() {
    boots_and_reports(Format::Pvh, 3200, false);
}

#[test]
fn bzimage_with_3200_mib_sees_ram_split_around_the_mmio_hole_and_initrd_below_its_max() {
    // hello.bzimage's initrd_addr_max is 0x7fffffff, below the top of RAM under 3 GiB.
    boots_and_reports(Format::BzImage, 3200, true);
}

#[test]
fn raw_kernel_without_initrd_reports_none() {
    boots_and_reports(Format::Raw, 256, false);
}

#[test]
fn second_vcpu_is_in_the_mp_table_and_starts_on_init_sipi() {
    if !kvm_usable() {
        return;
    }
    let append = "console=ttyS0 nimbus.test=smp";
    let mut config = VmConfig::new(Format::Elf, 128, append);
    config.cpus = 2;

    let out = run(&config.args());

    let mut expected = expected_report(Format::Elf, append, 128, None);
    expected.extend(["SMP: AP 1", "smp: ap started", "NIMBUS-GUEST done"].map(String::from));
    out.assert_guest_output(&expected, 2);
    out.assert_exit_code(0);
}

#[test]
fn four_vcpus_are_in_the_mp_table_and_a_pvh_guest_starts_one() {
    if !kvm_usable() {
        return;
    }
    let append = "nimbus.test=smp";
    let mut config = VmConfig::new(Format::Pvh, 64, append);
    config.cpus = 4;

    let out = run(&config.args());

    let mut expected = expected_report(Format::Pvh, append, 64, None);
    expected.extend(["SMP: AP 1", "smp: ap started", "NIMBUS-GUEST done"].map(String::from));
    out.assert_guest_output(&expected, 4);
    out.assert_exit_code(0);
}
