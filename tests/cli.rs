//! Command-line behaviour of the `nimbus` binary: refused kernels, flags and device sets exit
//! with status 1 and a first stderr line that names the file, the flag or the problem;
//! -version and -help succeed.

mod common;

use std::path::Path;

use common::{
    guest, kvm_usable, names_flag, replace_arg, run, scratch_dir, Format, Output, VmConfig,
};

/// Status 1, and the first stderr line names the problem (passes `names`).
fn assert_refused(out: &Output, what: &str, names: impl Fn(&str) -> bool) {
    out.assert_exit_code(1);
    assert!(
        names(out.first_stderr_line()),
        "stderr's first line does not name {what}\n{}",
        out.describe()
    );
    assert!(
        !out.stdout.contains("NIMBUS-GUEST"),
        "a guest ran\n{}",
        out.describe()
    );
}

fn refuses_kernel(kernel: &Path) {
    if !kvm_usable() {
        return;
    }
    let mut config = VmConfig::new(Format::Elf, 128, "console=ttyS0");
    config.kernel = kernel.to_path_buf();
    let out = run(&config.args());
    let path = kernel.display().to_string();
    assert_refused(&out, &format!("the kernel file {path}"), |line| {
        line.contains(&path)
    });
}

#[test]
fn empty_kernel_file_is_refused_naming_the_file() {
    refuses_kernel(&guest("empty"));
}

#[test]
fn text_file_as_kernel_is_refused_naming_the_file() {
    refuses_kernel(&guest("text.txt"));
}

#[test]
fn missing_kernel_file_is_refused_naming_the_file() {
    let missing = scratch_dir().join("no-such-kernel.elf");
    assert!(!missing.exists(), "{} must not exist", missing.display());
    refuses_kernel(&missing);
}

#[test]
fn memory_size_with_a_bad_suffix_is_refused_naming_the_flag() {
    let args = replace_arg(VmConfig::new(Format::Elf, 128, "").args(), "-m", "12xyz");
    let out = run(&args);
    assert_refused(&out, "-m or its value", |line| {
        names_flag(line, "-m") || line.contains("12xyz")
    });
}

#[test]
fn unknown_flag_is_refused_naming_it() {
    let mut args = VmConfig::new(Format::Elf, 128, "").args();
    args.insert(0, "-frobnicate".into());
    let out = run(&args);
    assert_refused(&out, "-frobnicate", |line| line.contains("frobnicate"));
}

#[test]
fn more_virtio_devices_than_interrupt_lines_are_refused_naming_the_limit() {
    if !kvm_usable() {
        return;
    }
    let mut config = VmConfig::new(Format::Elf, 128, "console=ttyS0");
    for i in 0..9 {
        let image = scratch_dir().join(format!("cli-disk-{i}.img"));
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(1 << 20))
            .expect("create a disk image");
        config.extra_args.extend([
            "-drive".to_string(),
            format!("id=d{i},file={},readonly=on", image.display()),
            "-device".to_string(),
            format!("virtio-blk-device,drive=d{i}"),
        ]);
    }
    let out = run(&config.args());
    assert_refused(&out, "the virtio device limit", |line| {
        line.contains("too many virtio devices") && line.contains("at most 8")
    });
}

fn prints_version(flag: &str) {
    let out = run(&[flag]);
    out.assert_exit_code(0);
    assert!(
        out.stdout.contains(env!("CARGO_PKG_VERSION")),
        "{flag} does not print version {}\n{}",
        env!("CARGO_PKG_VERSION"),
        out.describe()
    );
}

#[test]
fn version_flag_prints_the_version() {
    prints_version("-version");
}

#[test]
fn double_dash_version_flag_prints_the_version() {
    prints_version("--version");
}

#[test]
fn help_flag_lists_the_flags_and_exits_0() {
    let out = run(&["-help"]);
    out.assert_exit_code(0);
    for flag in ["-kernel", "-append", "-initrd", "-smp", "-serial"] {
        assert!(
            out.stdout.contains(flag),
            "-help does not mention {flag}\n{}",
            out.describe()
        );
    }
}
