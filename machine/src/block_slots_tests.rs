//! The slot table and backend registry, without a VM: the devices are real `Block`s over
//! temporary images, never activated by a driver.
#![allow(clippy::unwrap_used)]

use super::*;
use qmp::schema::DeviceDeletedInfo;
use qmp::ErrorClass;
use serde_json::{json, Value};
use vmm_sys_util::tempfile::TempFile;

fn image(sectors: u64) -> TempFile {
    let f = TempFile::new().unwrap();
    f.as_file().set_len(sectors * 512).unwrap();
    f
}

fn slots(drives: &[DriveConfig], count: usize) -> (BlockSlots, Vec<Labelled>) {
    block_devices(drives, count).unwrap()
}

fn drive(id: &str, image: &TempFile) -> DriveConfig {
    DriveConfig {
        id: id.to_owned(),
        path: image.as_path().to_owned(),
        readonly: false,
        serial: id.to_owned(),
        aio: Aio::Off,
        direct: false,
        iothread: None,
        num_queues: 1,
        throttle: virtio::ThrottleLimits::default(),
    }
}

fn options(value: Value) -> BlockdevOptions {
    serde_json::from_value(value).unwrap()
}

fn raw_node(name: &str, image: &TempFile) -> BlockdevOptions {
    options(
        json!({"node-name": name, "driver": "raw", "read-only": false,
        "file": {"driver": "file", "filename": image.as_path(), "aio": "threads"},
        "cache": {"direct": false}}),
    )
}

fn device(id: &str, drive: &str, addr: Option<&str>) -> DeviceAddArgs {
    let mut args = json!({"driver": "virtio-blk-mmio", "id": id, "drive": drive});
    if let Some(addr) = addr {
        args["addr"] = json!(addr);
    }
    serde_json::from_value(args).unwrap()
}

fn desc(result: Result<(), QmpError>) -> String {
    result.unwrap_err().desc
}

#[test]
fn drives_fill_the_first_slots_and_the_rest_are_empty() {
    let (a, b) = (image(8), image(16));
    let (table, devices) = slots(&[drive("d0", &a), drive("d1", &b)], 4);
    assert_eq!(devices.len(), 4);
    let caps: Vec<u64> = table.slots.iter().map(|s| s.device.capacity()).collect();
    assert_eq!(caps, [8, 16, 0, 0]);
    assert!(devices[2].0.contains("empty block slot 2"));
    assert_eq!(table.query_block().len(), 2);
}

#[test]
fn a_drive_with_two_queues_and_limits_shows_them_in_its_label_and_query_block() {
    let img = image(8);
    let mut d = drive("d0", &img);
    d.num_queues = 2;
    d.throttle = virtio::ThrottleLimits {
        iops: Some(500),
        bps: Some(1 << 20),
    };
    let (table, devices) = slots(&[d], 1);
    assert_eq!(devices[0].1.queue_max_sizes().len(), 2);
    assert!(
        devices[0]
            .0
            .contains("2 queues, at most 500 requests/s, at most 1048576 bytes/s"),
        "{}",
        devices[0].0
    );
    let info = serde_json::to_value(table.query_block()).unwrap();
    assert_eq!(info[0]["inserted"]["iops"], 500);
    assert_eq!(info[0]["inserted"]["bps"], 1 << 20);
}

#[test]
fn more_drives_than_slots_get_one_slot_each() {
    let (a, b) = (image(8), image(8));
    let (table, devices) = slots(&[drive("d0", &a), drive("d1", &b)], 0);
    assert_eq!((table.slots.len(), devices.len()), (2, 2));
}

#[test]
fn blockdev_add_and_device_add_put_the_image_in_the_slot() {
    let img = image(64);
    let (mut table, _) = slots(&[], 4);
    table.blockdev_add(&raw_node("drive-1", &img)).unwrap();
    assert_eq!(table.slots[1].device.capacity(), 0);
    table
        .device_add(&device("vdb", "drive-1", Some("0x1")))
        .unwrap();
    assert_eq!(table.slots[1].device.capacity(), 64);
    let info = serde_json::to_value(table.query_block()).unwrap();
    assert_eq!(info[0]["qdev"], "vdb");
    assert_eq!(info[0]["inserted"]["node-name"], "drive-1");
    assert_eq!(info[0]["inserted"]["image"]["virtual-size"], 64 * 512);
}

#[test]
fn device_add_without_addr_takes_the_first_free_slot() {
    let (a, b) = (image(8), image(8));
    let (mut table, _) = slots(&[drive("d0", &a)], 3);
    table.blockdev_add(&raw_node("n", &b)).unwrap();
    table.device_add(&device("x", "n", None)).unwrap();
    assert_eq!(table.slots[1].occupant, Some(("x".into(), "n".into())));
}

#[test]
fn device_del_empties_the_slot_and_reports_device_deleted() {
    let img = image(8);
    let (mut table, _) = slots(&[], 2);
    table.blockdev_add(&raw_node("n", &img)).unwrap();
    table.device_add(&device("vdb", "n", Some("0x1"))).unwrap();
    let event = table.device_del("vdb").unwrap().unwrap();
    assert_eq!(
        event,
        Event::DeviceDeleted(DeviceDeletedInfo {
            device: Some("vdb".into()),
            path: "vdb".into()
        })
    );
    assert_eq!(table.slots[1].device.capacity(), 0);
    assert!(table.query_block().is_empty());
    // The node is free again: it can go back in, or be deleted.
    table.device_add(&device("vdc", "n", Some("0x0"))).unwrap();
    table.device_del("vdc").unwrap().unwrap();
    table.blockdev_del("n").unwrap();
}

#[test]
fn command_line_drive_can_be_unplugged_and_its_node_deleted() {
    let img = image(8);
    let (mut table, _) = slots(&[drive("d0", &img)], 2);
    assert_eq!(desc(table.blockdev_del("d0")), "Node d0 is in use");
    table.device_del("d0").unwrap().unwrap();
    table.blockdev_del("d0").unwrap();
}

#[test]
fn busy_slot_is_refused_naming_the_device_in_it() {
    let (a, b) = (image(8), image(8));
    let (mut table, _) = slots(&[drive("d0", &a)], 2);
    table.blockdev_add(&raw_node("n", &b)).unwrap();
    assert_eq!(
        desc(table.device_add(&device("x", "n", Some("0x0")))),
        "Block slot 0x0 not available for x, in use by d0"
    );
}

#[test]
fn slot_out_of_range_is_refused() {
    let img = image(8);
    let (mut table, _) = slots(&[], 4);
    table.blockdev_add(&raw_node("n", &img)).unwrap();
    assert_eq!(
        desc(table.device_add(&device("x", "n", Some("0x4")))),
        "Block slot 0x4 does not exist: the machine has 4 block slots"
    );
    assert!(desc(table.device_add(&device("x", "n", Some("zz")))).contains("'zz'"));
}

#[test]
fn unknown_drive_is_refused_with_qemu_wording() {
    let (mut table, _) = slots(&[], 2);
    assert_eq!(
        desc(table.device_add(&device("x", "nope", None))),
        "Property 'virtio-blk-mmio.drive' can't find value 'nope'"
    );
}

#[test]
fn drive_already_attached_is_refused() {
    let img = image(8);
    let (mut table, _) = slots(&[], 2);
    table.blockdev_add(&raw_node("n", &img)).unwrap();
    table.device_add(&device("x", "n", None)).unwrap();
    assert_eq!(
        desc(table.device_add(&device("y", "n", None))),
        "Drive 'n' is already in use by another device"
    );
    assert_eq!(
        desc(table.device_add(&device("x", "n", None))),
        "Duplicate ID 'x' for device"
    );
}

#[test]
fn no_free_slot_is_an_error() {
    let (a, b) = (image(8), image(8));
    let (mut table, _) = slots(&[drive("d0", &a)], 1);
    table.blockdev_add(&raw_node("n", &b)).unwrap();
    assert!(desc(table.device_add(&device("x", "n", None))).starts_with("No free block slot"));
}

#[test]
fn blockdev_del_of_an_attached_or_unknown_node_is_refused() {
    let img = image(8);
    let (mut table, _) = slots(&[], 2);
    table.blockdev_add(&raw_node("n", &img)).unwrap();
    table.device_add(&device("x", "n", None)).unwrap();
    assert_eq!(desc(table.blockdev_del("n")), "Node n is in use");
    let err = table.blockdev_del("ghost").unwrap_err();
    assert_eq!(err.class, ErrorClass::GenericError);
    assert_eq!(err.desc, "Failed to find node with node-name='ghost'");
}

#[test]
fn device_del_of_an_unknown_id_finds_nothing() {
    let (mut table, _) = slots(&[], 2);
    assert!(table.device_del("ghost").is_none());
}

#[test]
fn blockdev_add_of_a_missing_file_says_it_cannot_open_it() {
    let (mut table, _) = slots(&[], 1);
    let node = options(json!({"node-name": "n", "driver": "file",
        "filename": "/nonexistent/nimbus.img"}));
    assert_eq!(
        desc(table.blockdev_add(&node)),
        "Could not open '/nonexistent/nimbus.img': No such file or directory"
    );
    assert!(table.nodes.is_empty());
}

#[test]
fn duplicate_node_name_is_refused() {
    let img = image(8);
    let (mut table, _) = slots(&[], 1);
    table.blockdev_add(&raw_node("n", &img)).unwrap();
    assert_eq!(
        desc(table.blockdev_add(&raw_node("n", &img))),
        "Duplicate nodes with node-name='n'"
    );
}

#[test]
fn read_only_and_aio_and_direct_come_from_either_level() {
    let img = image(8);
    let (mut table, _) = slots(&[], 1);
    let node = options(json!({"node-name": "n", "driver": "raw",
        "file": {"driver": "file", "filename": img.as_path(), "aio": "native", "read-only": true}}));
    table.blockdev_add(&node).unwrap();
    let n = &table.nodes["n"];
    assert!(n.readonly);
    assert_eq!(n.aio, Aio::Native);
    table.device_add(&device("x", "n", None)).unwrap();
    assert!(table.slots[0].device.is_async());
}

#[test]
fn raw_over_a_node_reference_is_not_supported() {
    let (mut table, _) = slots(&[], 1);
    let node = options(json!({"node-name": "n", "driver": "raw", "file": "other"}));
    assert!(desc(table.blockdev_add(&node)).contains("reference to node 'other'"));
}
