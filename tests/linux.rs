//! Boots the guest kit's real Linux 6.1 (guest-kit/) under nimbus.
//!
//! Early-boot oracle tests read what Linux prints in `setup_arch` about the boot information
//! Nimbus handed it (command line, E820 map, MP table, initrd placement, CPU count) and kill
//! the VM there: three boots, ELF and raw at 256 MiB and ELF at 3328 MiB (RAM split around
//! the 3 GiB MMIO hole), each compared line for line.
//!
//! Full-boot tests run the kit to its /init with root on a virtio-blk disk (a private copy of
//! the kit's rootfs.ext4), check its `KIT ...` report, and expect nimbus to exit 0 when the
//! guest resets through the i8042 (`reboot=k`) or triple-faults (`reboot=t`). On a kvm-pvm
//! host, which emulates every guest kernel instruction, each takes about 40-50 s.

mod common;
mod kit;

use std::time::Duration;

use common::{kvm_usable, VmConfig};
use kit::{
    disk_args, early_boot_report, early_boot_report_complete, expected_early_boot_report, kit,
    kit_cmdline, milestone_summary, parse_kit_line, with_reboot, KitVm, MILESTONES,
};

/// Long enough for the 3328 MiB boot under kvm-pvm, where Linux's emulated struct-page
/// initialisation takes ~50 s before the CPU-count line; the VM is killed as soon as that
/// line arrives, so a 256 MiB boot takes ~6 s there and well under a second on hardware KVM.
const EARLY_BOOT_TIMEOUT: Duration = Duration::from_secs(150);
/// A full boot to /init and back takes ~40 s under kvm-pvm.
const FULL_BOOT_TIMEOUT: Duration = Duration::from_secs(150);
const CPUS: u32 = 2;

/// The kit's command line for this host with an early console, so that timestamps start at
/// the banner.
fn append(reboot: &str, root_on_vda: bool) -> String {
    format!(
        "earlyprintk=serial,ttyS0 {}",
        with_reboot(&kit_cmdline(root_on_vda), reboot)
    )
}

fn early_boot_shows_what_nimbus_handed_over(raw: bool, mem_mib: u64) {
    if !kvm_usable() {
        return;
    }
    let kit = kit();
    let initrd = kit.initramfs();
    let initrd_size = std::fs::metadata(&initrd)
        .expect("the kit's initramfs exists")
        .len();
    let config = VmConfig {
        kernel: if raw {
            kit.vmlinux_bin()
        } else {
            kit.vmlinux()
        },
        mem_mib,
        cpus: CPUS,
        append: append("k", false),
        initrd: Some(initrd),
        // A disk too, so the command line carries Nimbus's virtio_mmio.device= entry.
        extra_args: disk_args("rootfs", &kit.rootfs(), true),
    };

    let vm = KitVm::spawn(&config);
    vm.wait_until(EARLY_BOOT_TIMEOUT, early_boot_report_complete);
    let transcript = vm.kill();
    eprintln!(
        "early boot of {} with {mem_mib} MiB: CPU count line after {:.1} s",
        config.kernel.display(),
        transcript
            .seconds_to("smpboot: Allowing ")
            .unwrap_or(f64::NAN)
    );

    assert_eq!(
        early_boot_report(&transcript),
        expected_early_boot_report(&config, initrd_size),
        "Linux's view of the boot information differs (left: console, right: expected)\n{}",
        transcript.describe()
    );
}

#[test]
fn early_boot_of_elf_vmlinux_with_256_mib_shows_cmdline_e820_mptable_initrd_and_cpus() {
    early_boot_shows_what_nimbus_handed_over(false, 256);
}

#[test]
fn early_boot_of_raw_vmlinux_bin_with_256_mib_shows_cmdline_e820_mptable_initrd_and_cpus() {
    early_boot_shows_what_nimbus_handed_over(true, 256);
}

#[test]
fn early_boot_of_elf_vmlinux_with_3328_mib_shows_ram_split_around_the_mmio_hole() {
    early_boot_shows_what_nimbus_handed_over(false, 3328);
}

/// Boots to /init with `reboot=<how>` and checks the report, the reset and exit status 0.
fn kit_boots_to_init_and_reset_ends_nimbus(how: &str) {
    if !kvm_usable() {
        return;
    }
    let kit = kit();
    let mem_mib = 256;
    // The guest mounts its root read-write: give each boot its own copy of the image.
    let disk = common::scratch_dir().join(format!("kit-rootfs-{how}-{}.ext4", std::process::id()));
    std::fs::copy(kit.rootfs(), &disk).expect("copy the kit's rootfs");
    let config = VmConfig {
        kernel: kit.vmlinux(),
        mem_mib,
        cpus: CPUS,
        append: append(how, true),
        initrd: None,
        extra_args: disk_args("rootfs", &disk, false),
    };

    let transcript = KitVm::spawn(&config).wait_exit(FULL_BOOT_TIMEOUT);
    eprintln!(
        "full boot with reboot={how}: {}",
        milestone_summary(&transcript)
    );
    let describe = transcript.describe();
    let texts = transcript.texts();
    let _ = std::fs::remove_file(&disk);

    let ready = texts.iter().filter(|l| **l == "GUEST_INIT_READY").count();
    assert_eq!(ready, 1, "GUEST_INIT_READY lines\n{describe}");
    let reports: Vec<&&str> = texts.iter().filter(|l| l.starts_with("KIT ")).collect();
    assert_eq!(reports.len(), 1, "KIT lines\n{describe}");
    let report = parse_kit_line(reports[0])
        .unwrap_or_else(|| panic!("malformed KIT line {:?}\n{describe}", reports[0]));
    assert_eq!(report.cpus, CPUS, "online CPUs\n{describe}");
    assert_eq!(
        report.disks, "vda",
        "the guest sees exactly the disk Nimbus gave it\n{describe}"
    );
    assert!(
        texts
            .iter()
            .any(|l| l.contains("virtio_blk virtio0: [vda]")),
        "Linux's virtio-blk driver found vda\n{describe}"
    );
    // MemTotal is RAM less the kernel image and early reservations: 246128 kB of 262144.
    let ram_kb = mem_mib * 1024;
    assert!(
        report.mem_kb > ram_kb * 85 / 100 && report.mem_kb < ram_kb,
        "MemTotal {} kB is implausible for {mem_mib} MiB\n{describe}",
        report.mem_kb
    );

    // Milestones and the report come in boot order, then the reset the guest asked for.
    let mut order: Vec<f64> = MILESTONES
        .iter()
        .map(|(name, prefix)| {
            transcript
                .seconds_to(prefix)
                .unwrap_or_else(|| panic!("no {name:?} line\n{describe}"))
        })
        .collect();
    order.push(transcript.seconds_to("KIT ").expect("checked above"));
    order.push(
        transcript
            .seconds_to("reboot: Restarting system")
            .unwrap_or_else(|| panic!("the guest never asked to restart\n{describe}")),
    );
    assert!(
        order.windows(2).all(|w| w[0] <= w[1]),
        "milestones out of order: {order:?}\n{describe}"
    );
    assert!(
        !texts.iter().any(|l| l.starts_with("Kernel panic")),
        "the kernel panicked\n{describe}"
    );
    assert_eq!(
        transcript.status.and_then(|s| s.code()),
        Some(0),
        "nimbus must exit 0 when the guest resets (reboot={how})\n{describe}"
    );
}

#[test]
fn kit_boots_to_init_and_its_i8042_reset_ends_nimbus_with_status_0() {
    kit_boots_to_init_and_reset_ends_nimbus("k");
}

#[test]
fn kit_boots_to_init_and_its_triple_fault_ends_nimbus_with_status_0() {
    kit_boots_to_init_and_reset_ends_nimbus("t");
}
