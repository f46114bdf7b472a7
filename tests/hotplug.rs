//! Block hot-plug through replaceable slots, end to end: the real nimbus with the test guest
//! and a QMP socket, driven over a raw Unix socket through Kata's sequence (blockdev-add,
//! device_add driver=virtio-blk-mmio addr=0x1, device_del waiting for DEVICE_DELETED,
//! blockdev-del) and its error paths. The seccomp filters stay on, so opening an image at
//! hot-plug time on the VMM thread is covered too.

mod common;

use common::{
    disk_image, kvm_usable, qmp_args, run, run_qmp_client, scratch_dir, Format, QmpClient, Vm,
    VmConfig, VM_TIMEOUT,
};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

const KATA_CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/qmp/hotplug.py");

fn socket_path(name: &str) -> PathBuf {
    scratch_dir().join(format!("hotplug-{name}-{}.sock", std::process::id()))
}

/// A disk image for one test of this process.
fn hotplug_image(name: &str, sectors: u64) -> PathBuf {
    disk_image(
        &format!("hotplug-{name}-{}.img", std::process::id()),
        sectors,
    )
}

/// A VM whose guest idles, with a QMP socket (and so the default 4 block slots).
fn vm_with_qmp(name: &str) -> (Vm, PathBuf) {
    let path = socket_path(name);
    let mut args = VmConfig::new(Format::Elf, 128, "nimbus.test=hang").args();
    args.extend(qmp_args(&path));
    let mut vm = Vm::spawn(&args);
    vm.wait_for_line("hang: now", VM_TIMEOUT);
    (vm, path)
}

fn raw_node(name: &str, image: &Path) -> Value {
    json!({"node-name": name, "driver": "raw", "read-only": false,
           "file": {"driver": "file", "filename": image, "aio": "native"},
           "cache": {"direct": false}})
}

fn blk(id: &str, drive: &str, addr: &str) -> Value {
    json!({"driver": "virtio-blk-mmio", "id": id, "drive": drive, "addr": addr})
}

#[test]
fn kata_block_hotplug_sequence_attaches_and_detaches_a_disk() {
    if !kvm_usable() {
        return;
    }
    let image = hotplug_image("kata", 2048);
    let (vm, path) = vm_with_qmp("kata");
    let mut c = QmpClient::connect(&path);
    assert_eq!(c.execute("query-block", json!({})), json!({"return": []}));

    c.ok("blockdev-add", raw_node("drive-1", &image));
    c.ok("device_add", blk("vdb", "drive-1", "0x1"));
    let block = c.execute("query-block", json!({}));
    let entries = block["return"].as_array().expect("a list");
    assert_eq!(entries.len(), 1, "{block}");
    assert_eq!(entries[0]["qdev"], "vdb");
    assert_eq!(entries[0]["inserted"]["node-name"], "drive-1");
    assert_eq!(entries[0]["inserted"]["file"], image.display().to_string());
    assert_eq!(entries[0]["inserted"]["image"]["virtual-size"], 2048 * 512);

    c.ok("device_del", json!({"id": "vdb"}));
    let deleted: Vec<&Value> = c
        .events
        .iter()
        .filter(|e| e["event"] == "DEVICE_DELETED")
        .collect();
    assert_eq!(deleted.len(), 1, "{:?}", c.events);
    assert_eq!(deleted[0]["data"], json!({"device": "vdb", "path": "vdb"}));
    assert_eq!(c.execute("query-block", json!({})), json!({"return": []}));
    c.ok("blockdev-del", json!({"node-name": "drive-1"}));

    // The slot can take a disk again.
    c.ok("blockdev-add", raw_node("drive-2", &image));
    c.ok("device_add", blk("vdb", "drive-2", "0x1"));
    c.ok("device_del", json!({"id": "vdb"}));

    c.ok("quit", json!({}));
    vm.wait(VM_TIMEOUT).assert_exit_code(0);
    let _ = std::fs::remove_file(&image);
}

#[test]
fn qemu_qmp_client_runs_the_kata_sequence() {
    if !kvm_usable() {
        return;
    }
    let image = hotplug_image("qemu-qmp", 2048);
    let (vm, path) = vm_with_qmp("qemu-qmp");
    run_qmp_client(KATA_CLIENT, &[&path, &image]);
    vm.wait(VM_TIMEOUT).assert_exit_code(0);
    let _ = std::fs::remove_file(&image);
}

#[test]
fn hotplug_errors_use_qemu_wording_and_change_nothing() {
    if !kvm_usable() {
        return;
    }
    let (a, b) = (hotplug_image("err-a", 64), hotplug_image("err-b", 64));
    let (vm, path) = vm_with_qmp("errors");
    let mut c = QmpClient::connect(&path);
    let missing = scratch_dir().join("hotplug-no-such-image.img");
    let desc = c.error("blockdev-add", raw_node("gone", &missing), "GenericError");
    assert_eq!(
        desc,
        format!(
            "Could not open '{}': No such file or directory",
            missing.display()
        )
    );
    c.ok("blockdev-add", raw_node("drive-a", &a));
    c.ok("blockdev-add", raw_node("drive-b", &b));
    let desc = c.error("blockdev-add", raw_node("drive-a", &a), "GenericError");
    assert_eq!(desc, "Duplicate nodes with node-name='drive-a'");
    c.ok("device_add", blk("vdb", "drive-a", "0x1"));

    let desc = c.error("device_add", blk("vdc", "drive-b", "0x1"), "GenericError");
    assert_eq!(desc, "Block slot 0x1 not available for vdc, in use by vdb");
    let desc = c.error("device_add", blk("vdc", "nope", "0x2"), "GenericError");
    assert_eq!(
        desc,
        "Property 'virtio-blk-mmio.drive' can't find value 'nope'"
    );
    let desc = c.error("device_add", blk("vdc", "drive-a", "0x2"), "GenericError");
    assert_eq!(desc, "Drive 'drive-a' is already in use by another device");
    let desc = c.error("device_add", blk("vdc", "drive-b", "0x4"), "GenericError");
    assert_eq!(
        desc,
        "Block slot 0x4 does not exist: the machine has 4 block slots"
    );
    let net = json!({"driver": "virtio-net-mmio", "id": "net0", "netdev": "n0", "addr": "0x0"});
    let desc = c.error("device_add", net, "GenericError");
    assert_eq!(
        desc,
        "Property 'virtio-net-mmio.netdev' can't find value 'n0'"
    );
    // Device ids are unique across block and net slots.
    let net = json!({"driver": "virtio-net-mmio", "id": "vdb", "netdev": "n0"});
    let desc = c.error("device_add", net, "GenericError");
    assert_eq!(desc, "Duplicate ID 'vdb' for device");
    let desc = c.error(
        "device_add",
        json!({"driver": "virtio-balloon-device", "id": "b0"}),
        "GenericError",
    );
    assert!(desc.contains("not supported yet"), "{desc}");
    let desc = c.error("netdev_del", json!({"id": "n0"}), "DeviceNotFound");
    assert_eq!(desc, "Device 'n0' not found");
    let desc = c.error(
        "blockdev-del",
        json!({"node-name": "drive-a"}),
        "GenericError",
    );
    assert_eq!(desc, "Node drive-a is in use");
    let desc = c.error(
        "blockdev-del",
        json!({"node-name": "ghost"}),
        "GenericError",
    );
    assert_eq!(desc, "Failed to find node with node-name='ghost'");
    let desc = c.error("device_del", json!({"id": "ghost"}), "DeviceNotFound");
    assert_eq!(desc, "Device 'ghost' not found");

    // None of that disturbed vdb; drive-b is still free to go elsewhere.
    let block = c.execute("query-block", json!({}));
    assert_eq!(block["return"].as_array().map(Vec::len), Some(1), "{block}");
    c.ok("device_add", blk("vdc", "drive-b", "0x2"));
    assert!(c.events.is_empty(), "{:?}", c.events);
    c.ok("quit", json!({}));
    vm.wait(VM_TIMEOUT).assert_exit_code(0);
    for image in [a, b] {
        let _ = std::fs::remove_file(image);
    }
}

#[test]
fn guest_sees_the_capacity_of_slot_1_change_with_a_config_interrupt() {
    if !kvm_usable() {
        return;
    }
    let image = hotplug_image("guest", 2048);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .and_then(|f| std::os::unix::fs::FileExt::write_all_at(&f, b"HOTPLUG-MARKER", 0))
        .expect("write the marker");
    let path = socket_path("guest");
    let mut args = VmConfig::new(Format::Elf, 128, "nimbus.test=blkwatch").args();
    args.extend(qmp_args(&path));
    let mut vm = Vm::spawn(&args);
    vm.wait_for_line("blkwatch: capacity=0", VM_TIMEOUT);
    let mut c = QmpClient::connect(&path);
    c.ok("blockdev-add", raw_node("drive-1", &image));
    c.ok("device_add", blk("vdb", "drive-1", "0x1"));
    vm.wait_for_line("blkwatch: capacity=2048 config-change", VM_TIMEOUT);
    vm.wait_for_line("blk: marker status=0 text=HOTPLUG-MARKER", VM_TIMEOUT);
    c.ok("device_del", json!({"id": "vdb"}));
    vm.wait_for_line("blkwatch: capacity=0 config-change", VM_TIMEOUT);
    // I/O on the empty slot fails with VIRTIO_BLK_S_IOERR.
    vm.wait_for_line("blk: marker status=1 text=", VM_TIMEOUT);
    drop(c);
    vm.wait(VM_TIMEOUT).assert_exit_code(0);
    let _ = std::fs::remove_file(&image);
}

#[test]
fn empty_slot_is_a_zero_sector_disk_failing_io_to_the_guest() {
    if !kvm_usable() {
        return;
    }
    // The guest's blk action drives the first virtio-mmio device: with a monitor and no
    // -drive, that is the empty block slot 0.
    let path = socket_path("empty");
    let mut args = VmConfig::new(Format::Elf, 128, "console=ttyS0 nimbus.test=blk").args();
    args.extend(qmp_args(&path));
    let out = run(&args);
    for line in [
        "blk: capacity=0",
        "blk: write status=1",
        "blk: flush status=1",
    ] {
        assert!(
            out.stdout.lines().any(|l| l.trim_end() == line),
            "missing {line:?} in\n{}\n{}",
            out.stdout,
            out.stderr
        );
    }
    out.assert_exit_code(0);
}
