//! The commands a client can execute, parsed from `execute` and `arguments`.

use serde_json::{Map, Value};

use crate::error::QmpError;
use crate::schema::{
    BalloonArgs, BlockdevDelArgs, BlockdevOptions, CommandInfo, DeviceAddArgs, EventInfo, FdArgs,
    IdArgs, MigrateArgs, NetdevAddArgs, QomGetArgs, QomSetArgs, EVENT_NAMES,
};
use crate::visit::Args;

/// A command for the machine to carry out, with typed arguments. `qmp_capabilities` is not
/// here: the [`Session`](crate::Session) answers it itself.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// `query-status`
    QueryStatus,
    /// `stop`: pause every vCPU.
    Stop,
    /// `cont`: resume every vCPU.
    Cont,
    /// `quit`: reply, then shut down.
    Quit,
    /// `system_powerdown`: ask the guest to power off.
    SystemPowerdown,
    /// `system_reset`: on microvm, a shutdown.
    SystemReset,
    /// `query-cpus` (legacy)
    QueryCpus,
    /// `query-cpus-fast`
    QueryCpusFast,
    /// `query-hotpluggable-cpus`
    QueryHotpluggableCpus,
    /// `getfd`: store the descriptor that came with the command.
    Getfd(FdArgs),
    /// `closefd`
    Closefd(FdArgs),
    /// `blockdev-add`
    BlockdevAdd(Box<BlockdevOptions>),
    /// `blockdev-del`
    BlockdevDel(BlockdevDelArgs),
    /// `netdev_add`
    NetdevAdd(NetdevAddArgs),
    /// `netdev_del`
    NetdevDel(IdArgs),
    /// `device_add`
    DeviceAdd(DeviceAddArgs),
    /// `device_del`
    DeviceDel(IdArgs),
    /// `balloon`
    Balloon(BalloonArgs),
    /// `query-balloon`
    QueryBalloon,
    /// `qom-get`: a property of a device (the balloon's `guest-stats`, ...).
    QomGet(QomGetArgs),
    /// `qom-set`: sets a property of a device.
    QomSet(QomSetArgs),
    /// `query-version`
    QueryVersion,
    /// `query-commands`
    QueryCommands,
    /// `query-events`
    QueryEvents,
    /// `query-machines`
    QueryMachines,
    /// `query-kvm`
    QueryKvm,
    /// `query-target`
    QueryTarget,
    /// `query-block`
    QueryBlock,
    /// `query-chardev`
    QueryChardev,
    /// `query-iothreads`
    QueryIothreads,
    /// `migrate`: write a snapshot of the stopped VM (`file:<dir>`).
    Migrate(MigrateArgs),
    /// `query-migrate`
    QueryMigrate,
}

/// Every command Nimbus accepts, as `query-commands` lists them.
pub const COMMAND_NAMES: &[&str] = &[
    "qmp_capabilities",
    "query-status",
    "stop",
    "cont",
    "quit",
    "system_powerdown",
    "system_reset",
    "query-cpus",
    "query-cpus-fast",
    "query-hotpluggable-cpus",
    "getfd",
    "closefd",
    "blockdev-add",
    "blockdev-del",
    "netdev_add",
    "netdev_del",
    "device_add",
    "device_del",
    "balloon",
    "query-balloon",
    "qom-get",
    "qom-set",
    "query-version",
    "query-commands",
    "query-events",
    "query-machines",
    "query-kvm",
    "query-target",
    "query-block",
    "query-chardev",
    "query-iothreads",
    "migrate",
    "query-migrate",
];

impl Command {
    /// Parse command `name` with its `arguments` object, checking members as QEMU does.
    /// Unknown names give `CommandNotFound` before the arguments are looked at.
    pub fn parse(name: &str, arguments: Map<String, Value>) -> Result<Command, QmpError> {
        let mut args = Args::new(arguments);
        let command = match name {
            "query-status" => Command::QueryStatus,
            "stop" => Command::Stop,
            "cont" => Command::Cont,
            "quit" => Command::Quit,
            "system_powerdown" => Command::SystemPowerdown,
            "system_reset" => Command::SystemReset,
            "query-cpus" => Command::QueryCpus,
            "query-cpus-fast" => Command::QueryCpusFast,
            "query-hotpluggable-cpus" => Command::QueryHotpluggableCpus,
            "getfd" => Command::Getfd(FdArgs::read(&mut args)?),
            "closefd" => Command::Closefd(FdArgs::read(&mut args)?),
            "blockdev-add" => {
                return Ok(Command::BlockdevAdd(Box::new(BlockdevOptions::read_root(
                    args,
                )?)))
            }
            "blockdev-del" => Command::BlockdevDel(BlockdevDelArgs::read(&mut args)?),
            "netdev_add" => return Ok(Command::NetdevAdd(NetdevAddArgs::read(args)?)),
            "netdev_del" => Command::NetdevDel(IdArgs::read(&mut args)?),
            "device_add" => return Ok(Command::DeviceAdd(DeviceAddArgs::read(args)?)),
            "device_del" => Command::DeviceDel(IdArgs::read(&mut args)?),
            "balloon" => Command::Balloon(BalloonArgs::read(&mut args)?),
            "query-balloon" => Command::QueryBalloon,
            "qom-get" => Command::QomGet(QomGetArgs::read(&mut args)?),
            "qom-set" => Command::QomSet(QomSetArgs::read(&mut args)?),
            "query-version" => Command::QueryVersion,
            "query-commands" => Command::QueryCommands,
            "query-events" => Command::QueryEvents,
            "query-machines" => Command::QueryMachines,
            "query-kvm" => Command::QueryKvm,
            "query-target" => Command::QueryTarget,
            "query-block" => Command::QueryBlock,
            "query-chardev" => Command::QueryChardev,
            "query-iothreads" => Command::QueryIothreads,
            "migrate" => Command::Migrate(MigrateArgs::read(&mut args)?),
            "query-migrate" => Command::QueryMigrate,
            _ => return Err(QmpError::command_not_found(name)),
        };
        args.finish()?;
        Ok(command)
    }

    /// The command name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            Command::QueryStatus => "query-status",
            Command::Stop => "stop",
            Command::Cont => "cont",
            Command::Quit => "quit",
            Command::SystemPowerdown => "system_powerdown",
            Command::SystemReset => "system_reset",
            Command::QueryCpus => "query-cpus",
            Command::QueryCpusFast => "query-cpus-fast",
            Command::QueryHotpluggableCpus => "query-hotpluggable-cpus",
            Command::Getfd(_) => "getfd",
            Command::Closefd(_) => "closefd",
            Command::BlockdevAdd(_) => "blockdev-add",
            Command::BlockdevDel(_) => "blockdev-del",
            Command::NetdevAdd(_) => "netdev_add",
            Command::NetdevDel(_) => "netdev_del",
            Command::DeviceAdd(_) => "device_add",
            Command::DeviceDel(_) => "device_del",
            Command::Balloon(_) => "balloon",
            Command::QueryBalloon => "query-balloon",
            Command::QomGet(_) => "qom-get",
            Command::QomSet(_) => "qom-set",
            Command::QueryVersion => "query-version",
            Command::QueryCommands => "query-commands",
            Command::QueryEvents => "query-events",
            Command::QueryMachines => "query-machines",
            Command::QueryKvm => "query-kvm",
            Command::QueryTarget => "query-target",
            Command::QueryBlock => "query-block",
            Command::QueryChardev => "query-chardev",
            Command::QueryIothreads => "query-iothreads",
            Command::Migrate(_) => "migrate",
            Command::QueryMigrate => "query-migrate",
        }
    }
}

/// The answer to `query-commands`: every supported command.
pub fn query_commands() -> Vec<CommandInfo> {
    COMMAND_NAMES
        .iter()
        .map(|name| CommandInfo {
            name: (*name).to_owned(),
        })
        .collect()
}

/// The answer to `query-events`: every event Nimbus may send.
pub fn query_events() -> Vec<EventInfo> {
    EVENT_NAMES
        .iter()
        .map(|name| EventInfo {
            name: (*name).to_owned(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(name: &str, args: Value) -> Result<Command, QmpError> {
        match args {
            Value::Object(map) => Command::parse(name, map),
            other => panic!("test arguments must be an object, got {other}"),
        }
    }

    #[test]
    fn every_listed_name_except_capabilities_parses_back_to_itself() {
        let needs_args = [
            ("getfd", json!({"fdname": "fd0"})),
            ("closefd", json!({"fdname": "fd0"})),
            (
                "blockdev-add",
                json!({"node-name": "d", "driver": "file", "filename": "/x"}),
            ),
            ("blockdev-del", json!({"node-name": "d"})),
            (
                "netdev_add",
                json!({"id": "n", "type": "tap", "ifname": "tap0"}),
            ),
            ("netdev_del", json!({"id": "n"})),
            (
                "device_add",
                json!({"driver": "virtio-net-mmio", "netdev": "n"}),
            ),
            ("device_del", json!({"id": "n"})),
            ("balloon", json!({"value": 1024})),
            (
                "qom-get",
                json!({"path": "balloon0", "property": "guest-stats"}),
            ),
            (
                "qom-set",
                json!({"path": "balloon0", "property": "guest-stats-polling-interval", "value": 2}),
            ),
            ("migrate", json!({"uri": "file:/tmp/snap"})),
        ];
        for name in COMMAND_NAMES.iter().filter(|n| **n != "qmp_capabilities") {
            let args = needs_args
                .iter()
                .find(|(n, _)| n == name)
                .map_or(json!({}), |a| a.1.clone());
            let command = parse(name, args).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(command.name(), *name);
        }
    }

    #[test]
    fn unknown_command_is_command_not_found() {
        let err = parse("foo", json!({"x": 1})).expect_err("unknown");
        assert_eq!(err, QmpError::command_not_found("foo"));
        assert_eq!(err.desc, "The command foo has not been found");
    }

    #[test]
    fn command_without_arguments_rejects_any_member() {
        let err = parse("stop", json!({"now": true})).expect_err("unexpected");
        assert_eq!(err.desc, "Parameter 'now' is unexpected");
    }

    #[test]
    fn getfd_without_fdname_reports_it_missing() {
        let err = parse("getfd", json!({})).expect_err("missing");
        assert_eq!(err.desc, "Parameter 'fdname' is missing");
    }

    #[test]
    fn device_add_keeps_unknown_qemu_members() {
        let args = json!({"driver": "virtio-blk-mmio", "id": "vdb", "drive": "drive-1",
                          "addr": "0x1", "romfile": "", "bus": "virtio-mmio-bus.1",
                          "share-rw": "on"});
        let Command::DeviceAdd(device) = parse("device_add", args).expect("valid") else {
            panic!("device_add expected");
        };
        assert_eq!(device.addr.as_deref(), Some("0x1"));
        assert_eq!(device.bus.as_deref(), Some("virtio-mmio-bus.1"));
        assert_eq!(device.extra.len(), 2);
    }

    #[test]
    fn introspection_lists_every_command_and_event() {
        assert_eq!(query_commands().len(), COMMAND_NAMES.len());
        assert!(query_commands().iter().any(|c| c.name == "query-cpus-fast"));
        assert_eq!(query_events().len(), 7);
    }
}
