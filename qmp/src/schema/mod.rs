//! The QMP schema Nimbus implements: command arguments, return values and events, as serde
//! types spelled the way QEMU 5.0's QAPI schema spells them on the wire.

mod args;
mod events;
mod returns;

pub use args::{
    BalloonArgs, BlockdevAio, BlockdevCacheOptions, BlockdevDelArgs, BlockdevDetectZeroes,
    BlockdevDiscard, BlockdevDriverOptions, BlockdevOptions, BlockdevOptionsFile,
    BlockdevOptionsRaw, BlockdevRef, DeviceAddArgs, FdArgs, IdArgs, MigrateArgs, NetdevAddArgs,
    OnOffAuto, QmpCapabilitiesArgs, QmpCapability, QomGetArgs, QomSetArgs,
};
pub use events::{
    BalloonChangedInfo, DeviceDeletedInfo, Event, ShutdownCause, ShutdownInfo, Timestamp,
    EVENT_NAMES,
};
pub use returns::{
    BalloonInfo, BlockDeviceInfo, BlockInfo, BlockdevCacheInfo, ChardevInfo, CommandInfo, CpuInfo,
    CpuInfoFast, CpuInstanceProperties, EventInfo, HotpluggableCpu, ImageInfo, IoThreadInfo,
    KvmInfo, MachineInfo, MigrationInfo, RunState, StatusInfo, TargetInfo, VersionInfo,
    VersionTriple,
};
