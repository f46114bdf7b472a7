//! virtio-blk drives on the command line: each becomes a virtio-mmio device whose window and IRQ
//! the VMM announces on the guest command line; the test guest's polled driver
//! (`nimbus.test=blk`) writes, flushes and reads back through it, and the image file is checked
//! afterwards; bad drives are refused naming the problem.

mod common;

use std::path::{Path, PathBuf};

use common::{
    disk_image, expected_report, kvm_usable, names_flag, run, scratch_dir, Format, Vm, VmConfig,
    VM_TIMEOUT,
};

fn with_drives(config: &VmConfig, drives: &[(&str, &PathBuf, &str)]) -> Vec<String> {
    let mut args = config.args();
    for (id, path, extra) in drives {
        args.push("-drive".into());
        args.push(format!("id={id},file={}{extra}", path.display()));
        args.push("-device".into());
        args.push(format!("virtio-blk-device,drive={id},id=blk-{id}"));
    }
    args
}

#[test]
fn drives_are_announced_on_the_guest_command_line_in_order() {
    if !kvm_usable() {
        return;
    }
    let root = disk_image("virtio-root.img", 2048);
    let data = disk_image("virtio-data.img", 64);
    let append = "console=ttyS0 reboot=k panic=1 nimbus.case=virtio-blk";
    let config = VmConfig::new(Format::Elf, 128, append);
    let args = with_drives(
        &config,
        &[("root", &root, ",readonly=on"), ("data", &data, "")],
    );

    let out = run(&args);

    let cmdline =
        format!("{append} virtio_mmio.device=4K@0xd0000000:16 virtio_mmio.device=4K@0xd0001000:17");
    let mut expected = expected_report(Format::Elf, &cmdline, 128, None);
    expected.push("NIMBUS-GUEST done".into());
    out.assert_guest_output(&expected, 1);
    out.assert_exit_code(0);
}

/// An image of `sectors` sectors with a marker in sector 0.
fn marked_image(name: &str, sectors: u64) -> PathBuf {
    let path = disk_image(name, sectors);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|f| std::os::unix::fs::FileExt::write_all_at(&f, MARKER.as_bytes(), 0))
        .expect("write the marker");
    path
}

const MARKER: &str = "NIMBUS-DISK-MARKER";

/// What the guest writes at sector 2.
fn pattern() -> Vec<u8> {
    (0..1024u32).map(|i| (i * 7 + 3) as u8).collect()
}

/// How a running nimbus does its disk I/O, as /proc shows it.
struct HostIo {
    /// The `flags:` of each descriptor nimbus holds on the disk image.
    image_flags: Vec<i32>,
    /// The completions each of its io_uring instances has posted (`CqTail` in fdinfo).
    uring_completions: Vec<u64>,
}

impl HostIo {
    fn of(pid: i32, image: &Path) -> HostIo {
        let image = std::fs::canonicalize(image).expect("canonicalize the image path");
        let fds = format!("/proc/{pid}/fd");
        let mut io = HostIo {
            image_flags: Vec::new(),
            uring_completions: Vec::new(),
        };
        for entry in std::fs::read_dir(&fds).unwrap_or_else(|e| panic!("read {fds}: {e}")) {
            let entry = entry.expect("read a /proc fd entry");
            // A descriptor closed since the directory was read has no link left.
            let Ok(target) = std::fs::read_link(entry.path()) else {
                continue;
            };
            let info_path = format!("/proc/{pid}/fdinfo/{}", entry.file_name().to_string_lossy());
            let info = || {
                std::fs::read_to_string(&info_path)
                    .unwrap_or_else(|e| panic!("read {info_path}: {e}"))
            };
            if target == image {
                let flags = fdinfo_field(&info(), "flags");
                let flags = i32::from_str_radix(&flags, 8)
                    .unwrap_or_else(|e| panic!("{info_path}: flags {flags:?}: {e}"));
                io.image_flags.push(flags);
            } else if target == Path::new("anon_inode:[io_uring]") {
                let tail = fdinfo_field(&info(), "CqTail");
                let tail = tail
                    .parse()
                    .unwrap_or_else(|e| panic!("{info_path}: CqTail {tail:?}: {e}"));
                io.uring_completions.push(tail);
            }
        }
        io
    }

    fn direct(&self) -> bool {
        self.image_flags.iter().any(|f| f & libc::O_DIRECT != 0)
    }
}

/// The value of `key:` in a /proc fdinfo file.
fn fdinfo_field(info: &str, key: &str) -> String {
    info.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {key}: in fdinfo\n{info}"))
}

/// Boots `format` with one drive and the guest's `blk` action, then lets the guest idle
/// (`hang`) so that /proc can show how nimbus does the I/O, and ends nimbus with SIGTERM.
/// Returns the guest's blk lines and what /proc showed.
fn run_blk_action(
    format: Format,
    image: &Path,
    drive_opts: &str,
    serial: &str,
) -> (Vec<String>, HostIo) {
    let append = "console=ttyS0 nimbus.test=blk nimbus.test=hang";
    let mut args = VmConfig::new(format, 128, append).args();
    args.push("-drive".into());
    args.push(format!("id=d0,file={}{drive_opts}", image.display()));
    args.push("-device".into());
    args.push(format!("virtio-blk-device,drive=d0,id=blk0{serial}"));
    let mut vm = Vm::spawn(&args);
    vm.wait_for_line("hang: now", VM_TIMEOUT);
    let io = HostIo::of(vm.pid(), image);
    vm.signal(libc::SIGTERM);
    let out = vm.wait(VM_TIMEOUT);
    out.assert_exit_code(0);
    let lines = out
        .guest_lines()
        .iter()
        .filter(|l| l.starts_with("blk: "))
        .map(|l| l.to_string())
        .collect();
    (lines, io)
}

fn guest_writes_flushes_and_reads_back(format: Format) {
    guest_writes_flushes_and_reads_back_with(format, "", "sync");
}

/// The `blk` action over a drive with `drive_opts` (`,aio=...`, `,direct=on`); `tag` names the
/// image. Besides the guest's results, checks from /proc that nimbus opened the image with
/// O_DIRECT exactly when `direct=on` asks for it, and served the guest through an io_uring
/// exactly when `aio=io_uring` or `aio=native` asks for one.
fn guest_writes_flushes_and_reads_back_with(format: Format, drive_opts: &str, tag: &str) {
    if !kvm_usable() {
        return;
    }
    let image = marked_image(&format!("virtio-rw-{}-{tag}.img", format.name()), 2048);
    let (lines, io) = run_blk_action(format, &image, drive_opts, ",serial=SN-42");
    let expected = [
        "blk: status=0xf flush=1",
        "blk: capacity=2048",
        "blk: id status=0 text=SN-42",
        "blk: interrupt status=1",
        "blk: marker status=0 text=NIMBUS-DISK-MARKER",
        "blk: write status=0",
        "blk: flush status=0",
        "blk: read status=0 same",
        "blk: beyond-end status=1",
        "blk: reset status=0",
    ];
    assert_eq!(lines, expected);
    let bytes = std::fs::read(&image).expect("read the image back");
    assert_eq!(
        &bytes[1024..2048],
        pattern().as_slice(),
        "sector 2-3 of the image"
    );
    assert_eq!(&bytes[..MARKER.len()], MARKER.as_bytes());

    assert!(
        !io.image_flags.is_empty(),
        "nimbus holds no descriptor on {}",
        image.display()
    );
    let direct = drive_opts.contains("direct=on");
    assert_eq!(
        io.direct(),
        direct,
        "O_DIRECT on the image with {drive_opts:?}: descriptor flags {}",
        io.image_flags
            .iter()
            .map(|f| format!("0o{f:o}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let uring = drive_opts.contains("aio=io_uring") || drive_opts.contains("aio=native");
    if uring {
        assert_eq!(
            io.uring_completions.len(),
            1,
            "one io_uring for the drive with {drive_opts:?}"
        );
        // The guest's reads and writes of sectors 0 and 2 at the least went through it.
        assert!(
            io.uring_completions[0] >= 3,
            "the io_uring completed {} requests for the guest's I/O",
            io.uring_completions[0]
        );
    } else {
        assert_eq!(
            io.uring_completions,
            Vec::<u64>::new(),
            "no io_uring with {drive_opts:?}"
        );
    }
}

#[test]
fn guest_driver_writes_flushes_and_reads_back_in_long_mode() {
    guest_writes_flushes_and_reads_back(Format::Elf);
}

#[test]
fn guest_driver_writes_flushes_and_reads_back_after_a_pvh_entry() {
    guest_writes_flushes_and_reads_back(Format::Pvh);
}

#[test]
fn guest_driver_works_over_io_uring() {
    guest_writes_flushes_and_reads_back_with(Format::Elf, ",aio=io_uring", "io_uring");
}

#[test]
fn guest_driver_works_over_aio_native() {
    guest_writes_flushes_and_reads_back_with(Format::Elf, ",aio=native", "native");
}

/// Whether files in the scratch directory can be opened with O_DIRECT (tmpfs may refuse).
fn o_direct_works() -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    let probe = disk_image("virtio-direct-probe.img", 8);
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&probe);
    if let Err(e) = &opened {
        eprintln!("SKIPPED: O_DIRECT refused in {:?}: {e}", scratch_dir());
    }
    opened.is_ok()
}

#[test]
fn guest_driver_works_with_direct_io() {
    if o_direct_works() {
        guest_writes_flushes_and_reads_back_with(Format::Elf, ",direct=on", "direct");
    }
}

#[test]
fn guest_driver_works_with_direct_io_over_io_uring() {
    if o_direct_works() {
        guest_writes_flushes_and_reads_back_with(
            Format::Elf,
            ",direct=on,aio=io_uring",
            "direct-uring",
        );
    }
}

#[test]
fn guest_benchmark_action_counts_its_random_reads() {
    if !kvm_usable() {
        return;
    }
    let image = disk_image("virtio-bench.img", 2048);
    let append = "console=ttyS0 nimbus.test=blkbench nimbus.blkreads=20";
    let mut args = VmConfig::new(Format::Elf, 128, append).args();
    args.push("-drive".into());
    args.push(format!("id=d0,file={},aio=io_uring", image.display()));
    args.push("-device".into());
    args.push("virtio-blk-device,drive=d0".into());
    let out = run(&args);
    out.assert_exit_code(0);
    let lines = out.guest_lines();
    assert!(
        lines.contains(&"blkbench: reads=20 errors=0"),
        "{}",
        out.describe()
    );
}

#[test]
fn read_only_drive_fails_the_guests_write_and_keeps_the_image() {
    if !kvm_usable() {
        return;
    }
    let image = marked_image("virtio-ro.img", 64);
    let (lines, _) = run_blk_action(Format::Elf, &image, ",readonly=on", "");
    assert!(
        lines.contains(&"blk: id status=0 text=d0".to_string()),
        "{lines:?}"
    );
    assert!(
        lines.contains(&"blk: write status=1".to_string()),
        "{lines:?}"
    );
    assert!(
        lines.contains(&"blk: read status=0 different".to_string()),
        "{lines:?}"
    );
    let bytes = std::fs::read(&image).expect("read the image back");
    assert!(
        bytes[1024..2048].iter().all(|&b| b == 0),
        "a read-only image changed"
    );
}

#[test]
fn missing_disk_image_is_refused_naming_the_drive_and_the_file() {
    if !kvm_usable() {
        return;
    }
    let missing = scratch_dir().join("no-such-disk.img");
    let config = VmConfig::new(Format::Elf, 128, "console=ttyS0");
    let out = run(&with_drives(&config, &[("d0", &missing, "")]));
    out.assert_exit_code(1);
    assert!(
        out.first_stderr_line().contains("'d0'"),
        "{}",
        out.describe()
    );
    assert!(
        out.stderr.contains("no-such-disk.img"),
        "{}",
        out.describe()
    );
    assert!(
        !out.stdout.contains("NIMBUS-GUEST"),
        "a guest ran\n{}",
        out.describe()
    );
}

#[test]
fn drive_without_a_device_is_refused_naming_the_flag() {
    let image = disk_image("virtio-lonely.img", 8);
    let mut args = VmConfig::new(Format::Elf, 128, "").args();
    args.push("-drive".into());
    args.push(format!("id=lonely,file={}", image.display()));
    let out = run(&args);
    out.assert_exit_code(1);
    assert!(
        names_flag(out.first_stderr_line(), "-drive"),
        "{}",
        out.describe()
    );
}
