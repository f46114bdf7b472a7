//! Return values of the query commands, spelled as QEMU 5.0's QAPI schema spells them.

use serde::{Deserialize, Serialize};

/// `query-status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusInfo {
    /// Whether the vCPUs are running.
    pub running: bool,
    /// Always false (no single-stepping).
    pub singlestep: bool,
    /// The run state.
    pub status: RunState,
}

impl StatusInfo {
    /// The status of a VM that is running (`true`) or paused (`false`).
    pub fn new(running: bool) -> StatusInfo {
        let status = if running {
            RunState::Running
        } else {
            RunState::Paused
        };
        StatusInfo {
            running,
            singlestep: false,
            status,
        }
    }
}

/// QAPI `RunState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunState {
    /// Stopped by the debugger.
    Debug,
    /// Waiting for an incoming migration.
    Inmigrate,
    /// An internal error stopped the VM.
    InternalError,
    /// An I/O error stopped the VM.
    IoError,
    /// Stopped by `stop`.
    Paused,
    /// Migration finished; VM stopped.
    Postmigrate,
    /// Created, not started yet.
    Prelaunch,
    /// Finishing a migration.
    FinishMigrate,
    /// Restoring a snapshot.
    RestoreVm,
    /// Running.
    Running,
    /// Saving a snapshot.
    SaveVm,
    /// Shut down.
    Shutdown,
    /// Suspended (ACPI S3).
    Suspended,
    /// Stopped by the watchdog.
    Watchdog,
    /// The guest panicked.
    GuestPanicked,
    /// COLO fault tolerance.
    Colo,
}

/// `props` of a vCPU (QAPI `CpuInstanceProperties`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct CpuInstanceProperties {
    /// NUMA node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<i64>,
    /// Socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_id: Option<i64>,
    /// Die.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub die_id: Option<i64>,
    /// Core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub core_id: Option<i64>,
    /// Thread within the core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_id: Option<i64>,
}

/// One entry of `query-cpus` (legacy; Kata and StratoVirt read it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuInfo {
    /// vCPU index.
    #[serde(rename = "CPU")]
    pub cpu: i64,
    /// Whether this is the monitor's current vCPU (the first one).
    pub current: bool,
    /// Whether the vCPU is halted.
    pub halted: bool,
    /// QOM path, e.g. `/machine/unattached/device[0]`.
    pub qom_path: String,
    /// Host thread id of the vCPU thread.
    pub thread_id: i64,
    /// Topology properties.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub props: Option<CpuInstanceProperties>,
    /// Target architecture family (`x86`).
    pub arch: String,
    /// Instruction pointer (x86 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pc: Option<i64>,
}

/// One entry of `query-cpus-fast`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct CpuInfoFast {
    /// vCPU index.
    pub cpu_index: i64,
    /// QOM path.
    pub qom_path: String,
    /// Host thread id of the vCPU thread.
    pub thread_id: i64,
    /// Topology properties.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub props: Option<CpuInstanceProperties>,
    /// Target architecture family (`x86`, deprecated in QEMU 5.0 but still sent).
    pub arch: String,
    /// Emulator target (`x86_64`).
    pub target: String,
}

/// One entry of `query-hotpluggable-cpus`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct HotpluggableCpu {
    /// CPU type name.
    #[serde(rename = "type")]
    pub kind: String,
    /// Threads per entry.
    pub vcpus_count: i64,
    /// Topology properties.
    pub props: CpuInstanceProperties,
    /// QOM path when the vCPU is present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qom_path: Option<String>,
}

/// `query-balloon`, and the data of `BALLOON_CHANGED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonInfo {
    /// Guest memory size in bytes.
    pub actual: i64,
}

/// `query-version`, and the version in the greeting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// The QEMU version clients should assume.
    pub qemu: VersionTriple,
    /// The implementation's own version string.
    pub package: String,
}

/// A QEMU version number; member order as QEMU sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionTriple {
    /// Micro version.
    pub micro: i64,
    /// Minor version.
    pub minor: i64,
    /// Major version.
    pub major: i64,
}

impl VersionInfo {
    /// Nimbus' version info: QEMU 5.0.1 (what clients expect) and `Nimbus-<version>`.
    pub fn nimbus(version: &str) -> VersionInfo {
        VersionInfo {
            qemu: VersionTriple {
                micro: 1,
                minor: 0,
                major: 5,
            },
            package: format!("Nimbus-{version}"),
        }
    }
}

/// One entry of `query-commands`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandInfo {
    /// Command name.
    pub name: String,
}

/// One entry of `query-events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventInfo {
    /// Event name.
    pub name: String,
}

/// One entry of `query-machines`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct MachineInfo {
    /// Machine type name.
    pub name: String,
    /// Alias.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// Whether this is the default machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_default: Option<bool>,
    /// Maximum number of vCPUs.
    pub cpu_max: i64,
    /// Whether vCPUs can be hot-plugged.
    pub hotpluggable_cpus: bool,
    /// Whether NUMA memory options are supported.
    pub numa_mem_supported: bool,
    /// Whether the machine type is deprecated.
    pub deprecated: bool,
    /// Default CPU model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_cpu_type: Option<String>,
}

/// `query-kvm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvmInfo {
    /// KVM is in use.
    pub enabled: bool,
    /// KVM is available.
    pub present: bool,
}

/// `query-target`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetInfo {
    /// Target architecture, e.g. `x86_64`.
    pub arch: String,
}

/// One entry of `query-block`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockInfo {
    /// Block backend name (empty for `-blockdev` nodes).
    pub device: String,
    /// The device's id or QOM path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qdev: Option<String>,
    /// Always `unknown` in QEMU.
    #[serde(rename = "type")]
    pub kind: String,
    /// Removable media.
    pub removable: bool,
    /// Media locked.
    pub locked: bool,
    /// The medium, when one is inserted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inserted: Option<BlockDeviceInfo>,
}

/// The medium of a [`BlockInfo`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockDeviceInfo {
    /// Image path.
    pub file: String,
    /// Node name.
    #[serde(rename = "node-name", default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Read-only.
    pub ro: bool,
    /// Format driver, e.g. `raw`.
    pub drv: String,
    /// Backing chain depth.
    pub backing_file_depth: i64,
    /// Encrypted.
    pub encrypted: bool,
    /// Zero detection (`off`, `on`, `unmap`).
    pub detect_zeroes: String,
    /// Throttling limits (0: none).
    pub bps: i64,
    /// Read throttling.
    pub bps_rd: i64,
    /// Write throttling.
    pub bps_wr: i64,
    /// I/O operations throttling.
    pub iops: i64,
    /// Read operations throttling.
    pub iops_rd: i64,
    /// Write operations throttling.
    pub iops_wr: i64,
    /// The image.
    pub image: ImageInfo,
    /// Write threshold (0: none).
    pub write_threshold: i64,
    /// Cache mode.
    pub cache: BlockdevCacheInfo,
}

/// Image information (QAPI `ImageInfo`, required members and size).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ImageInfo {
    /// Image path.
    pub filename: String,
    /// Format.
    pub format: String,
    /// Guest-visible size in bytes.
    pub virtual_size: i64,
    /// Host allocation in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual_size: Option<i64>,
}

/// Cache mode of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct BlockdevCacheInfo {
    /// Writeback caching towards the guest.
    pub writeback: bool,
    /// O_DIRECT.
    pub direct: bool,
    /// Flushes ignored.
    pub no_flush: bool,
}

/// One entry of `query-chardev`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ChardevInfo {
    /// Chardev id.
    pub label: String,
    /// Backend description, e.g. `unix:/run/qmp.sock,server`.
    pub filename: String,
    /// Whether a front end has it open.
    pub frontend_open: bool,
}

/// One entry of `query-iothreads` (QEMU's `IOThreadInfo`). Nimbus's iothreads wait in
/// `epoll_wait` without polling or batching, so the tuning members are 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct IoThreadInfo {
    /// The `-object iothread,id=` id.
    pub id: String,
    /// Its OS thread id.
    pub thread_id: i64,
    /// Longest busy-wait before sleeping, in ns.
    pub poll_max_ns: i64,
    /// How the busy-wait grows.
    pub poll_grow: i64,
    /// How the busy-wait shrinks.
    pub poll_shrink: i64,
    /// Most requests submitted at once.
    pub aio_max_batch: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn iothread_entry_uses_qemu_member_names() {
        let info = IoThreadInfo {
            id: "io1".to_owned(),
            thread_id: 4242,
            poll_max_ns: 0,
            poll_grow: 0,
            poll_shrink: 0,
            aio_max_batch: 0,
        };
        assert_eq!(
            serde_json::to_value(&info).expect("serializable"),
            json!({"id": "io1", "thread-id": 4242, "poll-max-ns": 0, "poll-grow": 0,
                   "poll-shrink": 0, "aio-max-batch": 0})
        );
    }

    #[test]
    fn query_cpus_entry_uses_legacy_member_names() {
        let info = CpuInfo {
            cpu: 0,
            current: true,
            halted: false,
            qom_path: "/machine/unattached/device[0]".to_owned(),
            thread_id: 4242,
            props: None,
            arch: "x86".to_owned(),
            pc: Some(0x1000),
        };
        assert_eq!(
            serde_json::to_value(&info).expect("serialises"),
            json!({"CPU": 0, "current": true, "halted": false,
                   "qom_path": "/machine/unattached/device[0]", "thread_id": 4242,
                   "arch": "x86", "pc": 4096})
        );
    }

    #[test]
    fn query_cpus_fast_entry_uses_kebab_case() {
        let info = CpuInfoFast {
            cpu_index: 1,
            qom_path: "/machine/unattached/device[1]".to_owned(),
            thread_id: 77,
            props: Some(CpuInstanceProperties {
                core_id: Some(1),
                ..CpuInstanceProperties::default()
            }),
            arch: "x86".to_owned(),
            target: "x86_64".to_owned(),
        };
        assert_eq!(
            serde_json::to_value(&info).expect("serialises"),
            json!({"cpu-index": 1, "qom-path": "/machine/unattached/device[1]",
                   "thread-id": 77, "props": {"core-id": 1}, "arch": "x86",
                   "target": "x86_64"})
        );
    }

    #[test]
    fn paused_status_reports_paused_and_not_running() {
        assert_eq!(
            serde_json::to_value(StatusInfo::new(false)).expect("serialises"),
            json!({"running": false, "singlestep": false, "status": "paused"})
        );
    }

    #[test]
    fn version_triple_serialises_micro_minor_major_in_that_order() {
        let json = serde_json::to_string(&VersionInfo::nimbus("0.1.0")).expect("serialises");
        assert_eq!(
            json,
            r#"{"qemu":{"micro":1,"minor":0,"major":5},"package":"Nimbus-0.1.0"}"#
        );
    }
}

/// `query-migrate`: the state of the last `migrate` (snapshot), as QEMU's `MigrationInfo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct MigrationInfo {
    /// `completed` or `failed`; absent when no snapshot was asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Why it failed.
    #[serde(rename = "error-desc", skip_serializing_if = "Option::is_none")]
    pub error_desc: Option<String>,
    /// Milliseconds the snapshot took.
    #[serde(rename = "total-time", skip_serializing_if = "Option::is_none")]
    pub total_time: Option<u64>,
}
