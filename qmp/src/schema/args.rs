//! Command arguments (QAPI `data` members) and how each is read from the wire.
//!
//! The serde derives give the wire spelling for clients and tests; reading from a client goes
//! through [`Args`] so that errors carry QEMU's wording and member paths.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::QmpError;
use crate::visit::{check_id, Args};

/// A QMP capability a client may enable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QmpCapability {
    /// Out-of-band execution (not offered by Nimbus).
    Oob,
}

/// `qmp_capabilities` arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QmpCapabilitiesArgs {
    /// Capabilities to enable; Nimbus offers none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable: Option<Vec<QmpCapability>>,
}

impl QmpCapabilitiesArgs {
    pub(crate) fn read(args: &mut Args) -> Result<Self, QmpError> {
        Ok(QmpCapabilitiesArgs {
            enable: args.opt_enum_list("enable")?,
        })
    }
}

/// `getfd` / `closefd` arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdArgs {
    /// The name the descriptor is stored under.
    pub fdname: String,
}

impl FdArgs {
    pub(crate) fn read(args: &mut Args) -> Result<Self, QmpError> {
        Ok(FdArgs {
            fdname: args.req_str("fdname")?,
        })
    }
}

/// `blockdev-del` arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockdevDelArgs {
    /// The node to remove.
    #[serde(rename = "node-name")]
    pub node_name: String,
}

impl BlockdevDelArgs {
    pub(crate) fn read(args: &mut Args) -> Result<Self, QmpError> {
        Ok(BlockdevDelArgs {
            node_name: args.req_str("node-name")?,
        })
    }
}

/// `device_del` and `netdev_del` arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdArgs {
    /// The device or backend id.
    pub id: String,
}

impl IdArgs {
    pub(crate) fn read(args: &mut Args) -> Result<Self, QmpError> {
        Ok(IdArgs {
            id: args.req_str("id")?,
        })
    }
}

/// `balloon` arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonArgs {
    /// Target guest memory size in bytes.
    pub value: i64,
}

impl BalloonArgs {
    pub(crate) fn read(args: &mut Args) -> Result<Self, QmpError> {
        Ok(BalloonArgs {
            value: args.req_int("value")?,
        })
    }
}

/// `qom-get` arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QomGetArgs {
    /// The object: a QOM path (`/machine/peripheral/<id>`) or a device id.
    pub path: String,
    /// The property name.
    pub property: String,
}

impl QomGetArgs {
    pub(crate) fn read(args: &mut Args) -> Result<Self, QmpError> {
        Ok(QomGetArgs {
            path: args.req_str("path")?,
            property: args.req_str("property")?,
        })
    }
}

/// `qom-set` arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QomSetArgs {
    /// The object: a QOM path (`/machine/peripheral/<id>`) or a device id.
    pub path: String,
    /// The property name.
    pub property: String,
    /// The new value, as the property's type reads it.
    pub value: serde_json::Value,
}

impl QomSetArgs {
    pub(crate) fn read(args: &mut Args) -> Result<Self, QmpError> {
        let path = args.req_str("path")?;
        let property = args.req_str("property")?;
        let value = args.take("value");
        Ok(QomSetArgs {
            path,
            property,
            value: args.required("value", value)?,
        })
    }
}

/// `device_add` arguments. QEMU reads these like `-device` options: scalar values become
/// text, and members Nimbus has no use for (`romfile`, `share-rw`, ...) are kept in `extra`
/// and ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceAddArgs {
    /// Device model, e.g. `virtio-blk-mmio`.
    pub driver: String,
    /// Device id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Bus name (ignored on virtio-mmio).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bus: Option<String>,
    /// Block backend (`node-name` of a `blockdev-add`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drive: Option<String>,
    /// Network backend (`id` of a `netdev_add`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netdev: Option<String>,
    /// Slot, as a hex string such as `"0x1"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    /// MAC address of a network device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Every other member, as sent.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl DeviceAddArgs {
    pub(crate) fn read(mut args: Args) -> Result<Self, QmpError> {
        let driver = args.opt_opts_str("driver");
        let driver = args.required("driver", driver)?;
        let id = opts_id(&mut args)?;
        Ok(DeviceAddArgs {
            driver,
            id,
            bus: args.opt_opts_str("bus"),
            drive: args.opt_opts_str("drive"),
            netdev: args.opt_opts_str("netdev"),
            addr: args.opt_opts_str("addr"),
            mac: args.opt_opts_str("mac"),
            extra: args.into_rest(),
        })
    }
}

/// `netdev_add` arguments, read like `-netdev` options (QEMU 5.0's `netdev_add`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetdevAddArgs {
    /// Backend id.
    pub id: String,
    /// Backend type; Nimbus supports `tap`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Host tap interface name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ifname: Option<String>,
    /// One tap descriptor: a `getfd` name or a number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fd: Option<String>,
    /// Several tap descriptors separated by `:`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fds: Option<String>,
    /// Whether to use vhost-net.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost: Option<bool>,
    /// vhost descriptors separated by `:`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhostfds: Option<String>,
    /// Number of queue pairs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queues: Option<u32>,
    /// Every other member (`script`, `downscript`, ...), as sent.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl NetdevAddArgs {
    pub(crate) fn read(mut args: Args) -> Result<Self, QmpError> {
        let kind = args.opt_opts_str("type");
        let kind = args.required("type", kind)?;
        let id = opts_id(&mut args)?;
        let id = args.required("id", id)?;
        Ok(NetdevAddArgs {
            id,
            kind,
            ifname: args.opt_opts_str("ifname"),
            fd: args.opt_opts_str("fd"),
            fds: args.opt_opts_str("fds"),
            vhost: args.opt_opts_bool("vhost")?,
            vhostfds: args.opt_opts_str("vhostfds"),
            queues: args.opt_opts_u32("queues")?,
            extra: args.into_rest(),
        })
    }
}

/// QEMU takes an option group's id only when it is a string, and checks its form.
fn opts_id(args: &mut Args) -> Result<Option<String>, QmpError> {
    match args.take("id") {
        Some(Value::String(id)) => check_id(&id).map(|()| Some(id)),
        _ => Ok(None),
    }
}

/// `blockdev-add` arguments: QAPI's `BlockdevOptions` for the drivers Nimbus supports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockdevOptions {
    /// Node name; required for the root node of `blockdev-add`.
    #[serde(rename = "node-name", default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Open read-only.
    #[serde(rename = "read-only", default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
    /// Fall back to read-only if writing is not permitted.
    #[serde(
        rename = "auto-read-only",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub auto_read_only: Option<bool>,
    /// Allow sharing with other writers.
    #[serde(
        rename = "force-share",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub force_share: Option<bool>,
    /// Discard handling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discard: Option<BlockdevDiscard>,
    /// Zero-write detection.
    #[serde(
        rename = "detect-zeroes",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub detect_zeroes: Option<BlockdevDetectZeroes>,
    /// Cache mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<BlockdevCacheOptions>,
    /// The driver and its own members.
    #[serde(flatten)]
    pub driver: BlockdevDriverOptions,
}

/// The driver-specific part of [`BlockdevOptions`], selected by `driver`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "driver")]
pub enum BlockdevDriverOptions {
    /// `raw` format over another node.
    #[serde(rename = "raw")]
    Raw(BlockdevOptionsRaw),
    /// A regular file.
    #[serde(rename = "file")]
    File(BlockdevOptionsFile),
    /// A host block device.
    #[serde(rename = "host_device")]
    HostDevice(BlockdevOptionsFile),
}

/// Driver names accepted in `driver`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum BlockdevDriver {
    #[serde(rename = "raw")]
    Raw,
    #[serde(rename = "file")]
    File,
    #[serde(rename = "host_device")]
    HostDevice,
}

/// Members of the `raw` driver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockdevOptionsRaw {
    /// The protocol node underneath.
    pub file: BlockdevRef,
    /// Offset of the image in the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<i64>,
    /// Size of the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<i64>,
}

/// Members of the `file` and `host_device` drivers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockdevOptionsFile {
    /// Host path.
    pub filename: String,
    /// I/O backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aio: Option<BlockdevAio>,
    /// Image locking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locking: Option<OnOffAuto>,
}

/// A child node: defined inline or referenced by node name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum BlockdevRef {
    /// An inline definition.
    Definition(Box<BlockdevOptions>),
    /// The `node-name` of an existing node.
    Reference(String),
}

/// `cache` members.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockdevCacheOptions {
    /// O_DIRECT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct: Option<bool>,
    /// Ignore flush requests.
    #[serde(rename = "no-flush", default, skip_serializing_if = "Option::is_none")]
    pub no_flush: Option<bool>,
}

/// QAPI `BlockdevAioOptions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockdevAio {
    /// A thread pool.
    Threads,
    /// Linux native AIO.
    Native,
    /// io_uring.
    IoUring,
}

/// QAPI `BlockdevDiscardOptions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockdevDiscard {
    /// Ignore discard requests.
    Ignore,
    /// Forward discard requests.
    Unmap,
}

/// QAPI `BlockdevDetectZeroesOptions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockdevDetectZeroes {
    /// No detection.
    Off,
    /// Detect and write zeroes efficiently.
    On,
    /// Detect and discard.
    Unmap,
}

/// QAPI `OnOffAuto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnOffAuto {
    /// Decide automatically.
    Auto,
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

impl BlockdevOptions {
    /// Read the root node of `blockdev-add`, which must be named (QEMU's rule).
    pub(crate) fn read_root(mut args: Args) -> Result<Self, QmpError> {
        let options = BlockdevOptions::read(&mut args)?;
        args.finish()?;
        if options.node_name.is_none() {
            return Err(QmpError::generic(
                "'node-name' must be specified for the root node",
            ));
        }
        Ok(options)
    }

    fn read(args: &mut Args) -> Result<Self, QmpError> {
        let driver = args.opt_enum::<BlockdevDriver>("driver")?;
        let driver = args.required("driver", driver)?;
        let cache = match args.opt_object("cache")? {
            Some(cache) => Some(BlockdevCacheOptions::read(cache)?),
            None => None,
        };
        Ok(BlockdevOptions {
            node_name: args.opt_str("node-name")?,
            read_only: args.opt_bool("read-only")?,
            auto_read_only: args.opt_bool("auto-read-only")?,
            force_share: args.opt_bool("force-share")?,
            discard: args.opt_enum("discard")?,
            detect_zeroes: args.opt_enum("detect-zeroes")?,
            cache,
            driver: BlockdevDriverOptions::read(driver, args)?,
        })
    }
}

impl BlockdevCacheOptions {
    fn read(mut args: Args) -> Result<Self, QmpError> {
        let cache = BlockdevCacheOptions {
            direct: args.opt_bool("direct")?,
            no_flush: args.opt_bool("no-flush")?,
        };
        args.finish()?;
        Ok(cache)
    }
}

impl BlockdevDriverOptions {
    fn read(driver: BlockdevDriver, args: &mut Args) -> Result<Self, QmpError> {
        Ok(match driver {
            BlockdevDriver::Raw => BlockdevDriverOptions::Raw(BlockdevOptionsRaw::read(args)?),
            BlockdevDriver::File => BlockdevDriverOptions::File(BlockdevOptionsFile::read(args)?),
            BlockdevDriver::HostDevice => {
                BlockdevDriverOptions::HostDevice(BlockdevOptionsFile::read(args)?)
            }
        })
    }
}

impl BlockdevOptionsRaw {
    fn read(args: &mut Args) -> Result<Self, QmpError> {
        let file = BlockdevRef::read(args, "file")?;
        let file = args.required("file", file)?;
        Ok(BlockdevOptionsRaw {
            file,
            offset: args.opt_int("offset")?,
            size: args.opt_int("size")?,
        })
    }
}

impl BlockdevOptionsFile {
    fn read(args: &mut Args) -> Result<Self, QmpError> {
        Ok(BlockdevOptionsFile {
            filename: args.req_str("filename")?,
            aio: args.opt_enum("aio")?,
            locking: args.opt_enum("locking")?,
        })
    }
}

impl BlockdevRef {
    /// QAPI alternate: a string is a reference, an object a definition.
    fn read(args: &mut Args, name: &str) -> Result<Option<Self>, QmpError> {
        match args.take(name) {
            None => Ok(None),
            Some(Value::String(node)) => Ok(Some(BlockdevRef::Reference(node))),
            Some(Value::Object(map)) => {
                let mut inner = args.nested(name, map);
                let options = BlockdevOptions::read(&mut inner)?;
                inner.finish()?;
                Ok(Some(BlockdevRef::Definition(Box::new(options))))
            }
            Some(_) => Err(QmpError::invalid_parameter_type(
                &args.full_name(name),
                "BlockdevRef",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(value: Value) -> Args {
        match value {
            Value::Object(map) => Args::new(map),
            other => panic!("test arguments must be an object, got {other}"),
        }
    }

    fn kata_blockdev() -> Value {
        json!({
            "node-name": "drive-1", "driver": "raw", "read-only": false,
            "file": {"driver": "file", "filename": "/dev/loop0", "aio": "native"},
            "cache": {"direct": true, "no-flush": false}
        })
    }

    #[test]
    fn kata_blockdev_add_reads_into_typed_options() {
        let options = BlockdevOptions::read_root(args(kata_blockdev())).expect("valid");
        assert_eq!(options.node_name.as_deref(), Some("drive-1"));
        let BlockdevDriverOptions::Raw(raw) = &options.driver else {
            panic!("raw expected")
        };
        let BlockdevRef::Definition(file) = &raw.file else {
            panic!("inline file expected")
        };
        let BlockdevDriverOptions::File(file) = &file.driver else {
            panic!("file expected")
        };
        assert_eq!(file.aio, Some(BlockdevAio::Native));
        assert_eq!(options.cache.and_then(|c| c.direct), Some(true));
    }

    #[test]
    fn blockdev_options_serialise_back_to_the_wire_form() {
        let options = BlockdevOptions::read_root(args(kata_blockdev())).expect("valid");
        assert_eq!(
            serde_json::to_value(&options).expect("serialises"),
            kata_blockdev()
        );
        let back: BlockdevOptions = serde_json::from_value(kata_blockdev()).expect("deserialises");
        assert_eq!(back, options);
    }

    #[test]
    fn blockdev_add_without_filename_names_the_nested_member() {
        let mut value = kata_blockdev();
        value["file"]
            .as_object_mut()
            .expect("object")
            .remove("filename");
        let err = BlockdevOptions::read_root(args(value)).expect_err("missing");
        assert_eq!(err.desc, "Parameter 'file.filename' is missing");
    }

    #[test]
    fn blockdev_add_with_unknown_driver_is_refused() {
        let err = BlockdevOptions::read_root(args(json!({"node-name": "a", "driver": "qcow9"})))
            .expect_err("unknown driver");
        assert_eq!(err.desc, "Parameter 'driver' does not accept value 'qcow9'");
    }

    #[test]
    fn blockdev_add_with_unknown_member_is_unexpected() {
        let mut value = kata_blockdev();
        value["cache"]["writeback"] = json!(true);
        let err = BlockdevOptions::read_root(args(value)).expect_err("unknown member");
        assert_eq!(err.desc, "Parameter 'cache.writeback' is unexpected");
    }

    #[test]
    fn netdev_add_accepts_qemu_option_spellings() {
        let value = json!({"type": "tap", "id": "net0", "fds": "fd0:fd1", "vhost": "on",
                           "queues": 2, "script": "no"});
        let netdev = NetdevAddArgs::read(args(value)).expect("valid");
        assert_eq!(netdev.fds.as_deref(), Some("fd0:fd1"));
        assert_eq!(netdev.vhost, Some(true));
        assert_eq!(netdev.queues, Some(2));
        assert_eq!(netdev.extra.get("script"), Some(&json!("no")));
    }

    #[test]
    fn device_add_serialises_with_extras_flattened() {
        let value = json!({"driver": "virtio-blk-mmio", "id": "vdb", "drive": "drive-1",
                           "addr": "0x1", "share-rw": "on"});
        let device = DeviceAddArgs::read(args(value.clone())).expect("valid");
        assert_eq!(serde_json::to_value(&device).expect("serialises"), value);
    }
}

/// `migrate` arguments: where to write the snapshot (`file:<directory>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrateArgs {
    /// The destination URI.
    pub uri: String,
}

impl MigrateArgs {
    pub(crate) fn read(args: &mut Args) -> Result<Self, QmpError> {
        let uri = args.req_str("uri")?;
        // QEMU's optional members that change nothing for a file destination.
        let _ = args.opt_bool("detach")?;
        let _ = args.opt_bool("resume")?;
        Ok(MigrateArgs { uri })
    }
}
