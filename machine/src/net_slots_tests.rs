//! The net slot table and backend registry, without a VM: empty slots hold real `Net`s; the
//! taps are pipes or refusals, since opening a real tap needs CAP_NET_ADMIN.

use super::*;
use qmp::ErrorClass;
use serde_json::{json, Value};

/// `slots` empty net slots on a new loop.
fn table(slots: usize) -> (NetSlots, Vec<Labelled>, EventLoop) {
    let mut events = EventLoop::new().expect("event loop");
    let mem = virtio_test_memory();
    let (table, devices) = net_devices(&[], slots, &mem, &mut events).expect("empty slots");
    (table, devices, events)
}

fn virtio_test_memory() -> Arc<GuestMemoryMmap> {
    let ranges = [(address_space::vm_memory::GuestAddress(0), 0x1000)];
    Arc::new(GuestMemoryMmap::from_ranges(&ranges).expect("memory"))
}

fn netdev(value: Value) -> NetdevAddArgs {
    serde_json::from_value(value).expect("netdev_add arguments")
}

fn device(id: &str, netdev: &str, addr: Option<&str>) -> DeviceAddArgs {
    let mut value = json!({"driver": "virtio-net-mmio", "id": id, "netdev": netdev});
    if let Some(addr) = addr {
        value["addr"] = json!(addr);
    }
    serde_json::from_value(value).expect("device_add arguments")
}

fn desc(result: Result<(), QmpError>) -> String {
    result.expect_err("an error").desc
}

#[test]
fn empty_slots_are_created_and_labelled() {
    let (slots, devices, _) = table(2);
    assert_eq!(slots.slots.len(), 2);
    assert!(
        devices[1].0.starts_with("empty net slot 1"),
        "{}",
        devices[1].0
    );
    assert!(slots.slots.iter().all(|s| !s.device.net.lock().has_tap()));
}

#[test]
fn net_drivers_are_recognised() {
    assert!(NetSlots::is_net_driver("virtio-net-mmio"));
    assert!(NetSlots::is_net_driver("virtio-net-device"));
    assert!(!NetSlots::is_net_driver("virtio-blk-mmio"));
}

#[test]
fn netdev_add_refuses_what_it_cannot_serve() {
    let (mut slots, _, _) = table(1);
    let mut fds = HashMap::new();
    let cases = [
        (json!({"id": "n", "type": "user"}), "Parameter 'type'"),
        (json!({"id": "n", "type": "tap"}), "needs 'ifname' or 'fd'"),
        (
            json!({"id": "n", "type": "tap", "fd": "missing"}),
            "File descriptor named 'missing' has not been found",
        ),
        (
            json!({"id": "n", "type": "tap", "fds": "a:b"}),
            "multiqueue",
        ),
        (
            json!({"id": "n", "type": "tap", "ifname": "t", "vhost": true}),
            "vhost",
        ),
        (
            json!({"id": "n", "type": "tap", "ifname": "this-name-is-far-too-long"}),
            "not a valid interface name",
        ),
    ];
    for (args, expected) in cases {
        let text = desc(slots.netdev_add(&netdev(args.clone()), &mut fds));
        assert!(text.contains(expected), "{args}: {text}");
    }
    assert!(slots.backends.is_empty());
}

#[test]
fn netdev_add_takes_the_getfd_descriptor_even_when_it_is_no_tap() {
    let (mut slots, _, _) = table(1);
    let (read, _write) = std::io::pipe().expect("pipe");
    let mut fds = HashMap::new();
    fds.insert("tapfd".to_owned(), File::from(OwnedFd::from(read)));
    let text = desc(slots.netdev_add(
        &netdev(json!({"id": "n", "type": "tap", "fd": "tapfd"})),
        &mut fds,
    ));
    assert!(
        text.contains("netdev 'n'") && text.contains("not a tap"),
        "{text}"
    );
    assert!(
        fds.is_empty(),
        "QEMU's monitor takes the descriptor either way"
    );
}

/// A registered backend over a stand-in tap (real taps need CAP_NET_ADMIN).
fn with_backend(slots: &mut NetSlots, id: &str) {
    slots.backends.insert(
        id.to_owned(),
        Backend {
            tap: Some(Box::new(PipeTap::new())),
            slot: None,
        },
    );
}

/// A pipe playing a tap: readable descriptor, writes go nowhere.
struct PipeTap {
    read: std::io::PipeReader,
}

impl PipeTap {
    fn new() -> PipeTap {
        let (read, _write) = std::io::pipe().expect("pipe");
        PipeTap { read }
    }
}

impl TapIo for PipeTap {
    fn read_frame(&mut self, _buf: &mut [u8]) -> std::io::Result<usize> {
        Err(std::io::ErrorKind::WouldBlock.into())
    }
    fn write_frame(&mut self, frame: &[u8]) -> std::io::Result<usize> {
        Ok(frame.len())
    }
    fn set_offload(&mut self, _flags: u32) -> Result<(), TapError> {
        Ok(())
    }
    fn raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.read)
    }
    fn name(&self) -> &str {
        "pipe"
    }
}

#[test]
fn device_add_and_del_move_the_backend_in_and_out_of_the_slot() {
    let (mut slots, _, mut lp) = table(2);
    with_backend(&mut slots, "n1");
    let mut args = device("eth1", "n1", Some("0x1"));
    args.mac = Some("52:54:00:00:00:42".into());
    slots.device_add(&args, &mut lp).expect("device_add");
    {
        let net = slots.slots[1].device.net.lock();
        assert!(net.has_tap());
        assert_eq!(net.mac().to_string(), "52:54:00:00:00:42");
    }
    assert_eq!(slots.backends["n1"].slot, Some(1));
    assert!(desc(slots.netdev_del("n1")).contains("in use"));
    assert!(
        desc(slots.device_add(&device("eth2", "n1", None), &mut lp)).contains("it's in use"),
        "one backend, one device"
    );
    let Some(Ok(Event::DeviceDeleted(info))) = slots.device_del("eth1", &mut lp) else {
        panic!("device_del of a net device gives DEVICE_DELETED")
    };
    assert_eq!(info.device.as_deref(), Some("eth1"));
    assert!(!slots.slots[1].device.net.lock().has_tap());
    assert!(slots.device_del("eth1", &mut lp).is_none(), "gone");
    slots.netdev_del("n1").expect("unused now");
    let err = slots.netdev_del("n1").expect_err("gone");
    assert_eq!(err.class, ErrorClass::DeviceNotFound);
}

#[test]
fn device_add_checks_its_arguments_and_the_slot() {
    let (mut slots, _, mut lp) = table(1);
    with_backend(&mut slots, "n");
    with_backend(&mut slots, "m");
    assert!(desc(slots.device_add(&device("e", "nope", None), &mut lp))
        .contains("can't find value 'nope'"));
    let mut bad_mac = device("e", "n", None);
    bad_mac.mac = Some("01:00:00:00:00:00".into());
    assert!(desc(slots.device_add(&bad_mac, &mut lp)).contains(".mac' doesn't take value"));
    assert!(
        desc(slots.device_add(&device("e", "n", Some("0x1")), &mut lp))
            .contains("Net slot 0x1 does not exist: the machine has 1 net slots")
    );
    slots
        .device_add(&device("e", "n", None), &mut lp)
        .expect("first free slot");
    assert!(desc(slots.device_add(&device("e", "m", None), &mut lp)).contains("Duplicate ID 'e'"));
    assert!(
        desc(slots.device_add(&device("f", "m", None), &mut lp)).starts_with("No free net slot")
    );
    assert!(
        desc(slots.device_add(&device("f", "m", Some("0")), &mut lp))
            .contains("Net slot 0x0 not available for f, in use by e")
    );
}
