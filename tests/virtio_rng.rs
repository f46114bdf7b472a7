//! virtio-rng as Kata configures it (`-object rng-random,filename=...` + `-device
//! virtio-rng-device,rng=...`), driven by the test guest's polling driver (`nimbus.test=rng`,
//! one 16-byte request printed back as text).

mod common;

use common::{kvm_usable, run, scratch_dir, Format, VmConfig};

fn rng_run(source: &str, device_extra: &str) -> common::Output {
    let mut config = VmConfig::new(Format::Elf, 128, "nimbus.test=rng");
    config.extra_args = vec![
        "-object".into(),
        format!("rng-random,id=objrng0,filename={source}"),
        "-device".into(),
        format!("virtio-rng-device,rng=objrng0,id=virtio-rng0{device_extra}"),
    ];
    run(&config.args())
}

fn known_source() -> String {
    let path = scratch_dir().join(format!("rng-source-{}", std::process::id()));
    std::fs::write(&path, b"NIMBUS-RNG-BYTES and more bytes after them").expect("write");
    path.display().to_string()
}

fn rng_line(out: &common::Output) -> String {
    out.stdout_lines()
        .into_iter()
        .find(|l| l.starts_with("rng: "))
        .unwrap_or_else(|| panic!("no rng line\n{}", out.describe()))
        .to_string()
}

#[test]
fn guest_reads_the_entropy_source_through_virtio_rng() {
    if !kvm_usable() {
        return;
    }
    let out = rng_run(&known_source(), "");
    out.assert_exit_code(0);
    assert_eq!(rng_line(&out), "rng: 16 bytes: NIMBUS-RNG-BYTES");
    assert!(
        out.stdout.contains("virtio_mmio.device=4K@0xd0000000:16"),
        "{}",
        out.describe()
    );
}

#[test]
fn max_bytes_per_period_caps_what_the_guest_gets() {
    if !kvm_usable() {
        return;
    }
    let out = rng_run(&known_source(), ",max-bytes=5,period=60000");
    out.assert_exit_code(0);
    assert_eq!(rng_line(&out), "rng: 5 bytes: NIMBU");
}

#[test]
fn urandom_fills_the_whole_request() {
    if !kvm_usable() {
        return;
    }
    let out = rng_run("/dev/urandom", "");
    out.assert_exit_code(0);
    assert!(
        rng_line(&out).starts_with("rng: 16 bytes: "),
        "{}",
        out.describe()
    );
}

#[test]
fn missing_entropy_source_is_refused_naming_it() {
    if !kvm_usable() {
        return;
    }
    let out = rng_run("/nonexistent/entropy", "");
    out.assert_exit_code(1);
    assert!(
        out.stderr.contains("/nonexistent/entropy"),
        "{}",
        out.describe()
    );
}
