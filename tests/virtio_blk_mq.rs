//! virtio-blk as Linux drives it: the test guest (`nimbus.test=blkmq`) reads and writes through
//! indirect descriptor tables on two request queues (`num-queues=2`), and the bytes are checked
//! on both sides; a looping indirect table ends that request with the VMM still answering QMP;
//! and `iops=` holds the guest's benchmark to its budget.

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{disk_image, kvm_usable, qmp_args, Format, QmpClient, Vm, VmConfig};
use serde_json::json;

/// An image of 256 sectors, each byte a function of its offset.
fn patterned_image(name: &str) -> PathBuf {
    let path = disk_image(name, 256);
    let bytes: Vec<u8> = (0..256 * 512u32).map(image_byte).collect();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|f| f.write_all_at(&bytes, 0))
        .expect("write the image pattern");
    path
}

fn image_byte(offset: u32) -> u8 {
    (offset.wrapping_mul(2_654_435_761) >> 13) as u8
}

/// The guest's checksum (32-bit FNV-1a).
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(2_166_136_261u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(16_777_619)
    })
}

fn blk_args(append: &str, image: &Path, drive: &str, device: &str) -> Vec<String> {
    let mut args = VmConfig::new(Format::Elf, 128, append).args();
    args.push("-drive".into());
    args.push(format!("id=d0,file={}{drive}", image.display()));
    args.push("-device".into());
    args.push(format!("virtio-blk-device,drive=d0{device}"));
    args
}

#[test]
fn indirect_tables_on_two_queues_read_and_write_byte_exact() {
    if !kvm_usable() {
        return;
    }
    for aio in ["", ",aio=io_uring"] {
        let image = patterned_image("virtio-mq.img");
        let args = blk_args(
            "console=ttyS0 nimbus.test=blkmq nimbus.blkqueues=2",
            &image,
            aio,
            ",num-queues=2",
        );
        let out = Vm::spawn(&args).wait(common::VM_TIMEOUT);
        out.assert_exit_code(0);
        let lines = out.guest_lines();
        let mut expected = vec!["blkmq: queues=2 indirect=1".to_string()];
        for q in 0..2u32 {
            let start = 8 * (q + 1) * 512;
            let bytes: Vec<u8> = (start..start + 4096).map(image_byte).collect();
            expected.push(format!(
                "blkmq: q{q} read status=0 sum={:#x}",
                fnv1a(&bytes)
            ));
            expected.push(format!("blkmq: q{q} write status=0"));
        }
        for line in &expected {
            assert!(
                lines.contains(&line.as_str()),
                "{aio}: missing {line:?}\n{}",
                out.describe()
            );
        }
        let file = std::fs::File::open(&image).expect("open the image");
        for q in 0..2u32 {
            let mut back = vec![0u8; 512];
            file.read_exact_at(&mut back, u64::from(100 + q) * 512)
                .expect("read the image");
            let want: Vec<u8> = (0..512u32).map(|i| (i * 3 + q) as u8).collect();
            assert_eq!(
                back,
                want,
                "{aio}: sector {} written through queue {q}",
                100 + q
            );
        }
    }
}

#[test]
fn a_looping_indirect_table_ends_that_request_and_the_vmm_answers_qmp() {
    if !kvm_usable() {
        return;
    }
    let image = patterned_image("virtio-mq-hostile.img");
    let socket = std::env::temp_dir().join(format!("nimbus-blkmq-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&socket);
    // The QMP socket sits in /tmp: Unix socket paths are limited to 107 bytes.
    let mut args = blk_args(
        "console=ttyS0 nimbus.test=blkmq nimbus.blkqueues=1 nimbus.blkhostile=1 nimbus.test=hang",
        &image,
        "",
        "",
    );
    args.extend(qmp_args(&socket));
    let mut vm = Vm::spawn(&args);
    // The request is used with nothing written (status 255) and the device needs a reset
    // (0x40 on top of DRIVER_OK and the rest: 0x4f).
    vm.wait_for_line(
        "blkmq: hostile used=1 status=255 device=0x4f",
        common::VM_TIMEOUT,
    );
    let mut qmp = QmpClient::connect(&socket);
    let status = qmp.execute("query-status", json!({}));
    assert_eq!(status["return"]["status"], "running", "{status}");
    qmp.ok("quit", json!({}));
    let out = vm.wait(common::VM_TIMEOUT);
    let _ = std::fs::remove_file(&socket);
    out.assert_exit_code(0);
}

#[test]
fn iops_limit_holds_the_guests_reads_to_the_budget() {
    if !kvm_usable() {
        return;
    }
    const IOPS: f64 = 500.0;
    const READS: u32 = 4000;
    let image = patterned_image("virtio-iops.img");
    let append = format!("console=ttyS0 nimbus.test=blkbench nimbus.blkreads={READS}");
    let args = blk_args(&append, &image, ",iops=500", "");
    let mut vm = Vm::spawn(&args);
    vm.wait_for_line("blkbench: start", common::VM_TIMEOUT);
    let started = Instant::now();
    vm.wait_for_line(
        &format!("blkbench: reads={READS} errors=0"),
        Duration::from_secs(60),
    );
    let secs = started.elapsed().as_secs_f64();
    let rate = f64::from(READS) / secs;
    // A full bucket lets one second's budget through at once; over 4000 reads (7 s at 500/s)
    // the rate stays below 1.2 x 500.
    assert!(
        rate <= 1.2 * IOPS,
        "{rate:.0} reads/s over {secs:.2} s with iops=500"
    );
    eprintln!("iops=500: {rate:.0} reads/s over {secs:.2} s");
    vm.wait(common::VM_TIMEOUT).assert_exit_code(0);
}
