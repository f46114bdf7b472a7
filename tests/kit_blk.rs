//! The kit's Linux 6.1 on a virtio-blk root with two request queues: Linux takes the indirect
//! descriptors and event-index suppression the device offers, spreads its requests over both
//! queues (one per vCPU), mounts the root read-write and reaches /init. Only Linux drives a
//! disk this way; about 40-150 s under kvm-pvm.

mod common;
mod kit;

use std::time::Duration;

use common::{kvm_usable, VmConfig};
use kit::{kit, kit_cmdline, one_boot_at_a_time, parse_kit_line, with_reboot, KitVm};

/// A full boot to /init and back under kvm-pvm on a busy host.
const FULL_BOOT_TIMEOUT: Duration = Duration::from_secs(300);

#[test]
fn linux_boots_from_a_two_queue_disk_with_indirect_descriptors_and_event_index() {
    if !kvm_usable() {
        return;
    }
    let _one = one_boot_at_a_time();
    let kit = kit();
    let disk = common::scratch_dir().join(format!("kit-rootfs-mq-{}.ext4", std::process::id()));
    std::fs::copy(kit.rootfs(), &disk).expect("copy the kit's rootfs");
    let config = VmConfig {
        kernel: kit.vmlinux(),
        mem_mib: 256,
        cpus: 2,
        append: format!(
            "earlyprintk=serial,ttyS0 {}",
            with_reboot(&kit_cmdline(true), "k")
        ),
        initrd: None,
        extra_args: vec![
            "-drive".into(),
            format!("id=rootfs,file={},aio=io_uring", disk.display()),
            "-device".into(),
            "virtio-blk-device,drive=rootfs,id=rootfs,num-queues=2".into(),
        ],
    };
    let transcript = KitVm::spawn(&config).wait_exit(FULL_BOOT_TIMEOUT);
    let describe = transcript.describe();
    let texts = transcript.texts();
    let _ = std::fs::remove_file(&disk);
    assert!(
        texts
            .iter()
            .any(|l| l.contains("virtio_blk virtio0: 2/0/0 default/read/poll queues")),
        "Linux uses both queues\n{describe}"
    );
    let report = texts
        .iter()
        .find(|l| l.starts_with("KIT "))
        .and_then(|l| parse_kit_line(l))
        .unwrap_or_else(|| panic!("no KIT report\n{describe}"));
    assert_eq!(report.disks, "vda", "{describe}");
    assert!(
        texts.contains(&"GUEST_INIT_READY"),
        "/init ran from the root on vda\n{describe}"
    );
    assert_eq!(
        transcript.status.and_then(|s| s.code()),
        Some(0),
        "the guest reset and nimbus exited 0\n{describe}"
    );
}
