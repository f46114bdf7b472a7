//! Block hot-plug through replaceable slots (`slots.rs`): `slots` virtio-blk devices exist from
//! boot, the `-drive`s fill slots
//! 0.. in order and the rest are empty (capacity 0). QMP `blockdev-add` registers a backend
//! (a node: an opened image), `device_add` attaches a node to a slot (the guest sees the new
//! capacity after a configuration-change interrupt), `device_del` detaches it once its requests
//! in flight completed, and `blockdev-del` drops a node no device uses. Errors are worded as
//! QEMU words them.

use crate::config::DriveConfig;
use crate::error::MachineError;
use crate::slots::{device_deleted, new_device_id, os_text, Labelled, SlotTable};
use qmp::schema::{
    BlockDeviceInfo, BlockInfo, BlockdevAio, BlockdevCacheInfo, BlockdevDriverOptions,
    BlockdevOptions, BlockdevOptionsFile, BlockdevRef, DeviceAddArgs, ImageInfo,
};
use qmp::{Event, QmpError};
use std::collections::BTreeMap;
use std::path::PathBuf;
use virtio::block::{DiskBackend, RawFile};
use virtio::{Aio, Block, BlockHandle, BlockOptions, VirtioDevice};

/// Block slots created when the machine has a QMP monitor and the configuration says nothing.
pub const DEFAULT_BLK_SLOTS: usize = 4;

/// Device models `device_add` takes for a block slot.
const BLOCK_DRIVERS: [&str; 2] = ["virtio-blk-mmio", "virtio-blk-device"];

/// A backend registered by `blockdev-add` (or a `-drive`).
struct Node {
    path: PathBuf,
    readonly: bool,
    aio: Aio,
    direct: bool,
    /// `iops=`/`bps=` of a `-drive` (what `query-block` reports).
    throttle: virtio::ThrottleLimits,
    /// The opened image while no device holds it.
    disk: Option<Box<dyn DiskBackend>>,
    /// The slot whose device holds it.
    slot: Option<usize>,
}

/// The block slots (each a handle to its device; the occupant's backend is a node name) and
/// the backends that can go in them.
pub struct BlockSlots {
    slots: SlotTable<BlockHandle>,
    nodes: BTreeMap<String, Node>,
}

/// Creates `max(slots, drives.len())` block devices: the drives in order, then empty slots.
pub fn block_devices(
    drives: &[DriveConfig],
    slots: usize,
) -> Result<(BlockSlots, Vec<Labelled>), MachineError> {
    let mut table = BlockSlots {
        slots: SlotTable::default(),
        nodes: BTreeMap::new(),
    };
    let mut devices = Vec::new();
    for (index, drive) in drives.iter().enumerate() {
        let block = drive_device(drive)?;
        let occupant = (drive.id.clone(), drive.id.clone());
        table.slots.push(block.handle(), Some(occupant));
        table.nodes.insert(
            drive.id.clone(),
            Node {
                path: drive.path.clone(),
                readonly: drive.readonly,
                aio: drive.aio,
                direct: drive.direct,
                throttle: drive.throttle,
                disk: None,
                slot: Some(index),
            },
        );
        let label = format!(
            "drive '{}' (block slot {index}): {:?}{} aio={:?}{}{}{}",
            drive.id,
            drive.path,
            if drive.readonly { " (read-only)" } else { "" },
            drive.aio,
            if drive.direct { " direct" } else { "" },
            if drive.num_queues > 1 {
                format!(", {} queues", drive.num_queues)
            } else {
                String::new()
            },
            throttle_label(drive.throttle),
        );
        devices.push((label, Box::new(block) as Box<dyn VirtioDevice>));
    }
    for index in drives.len()..slots {
        let serial = format!("slot{index}");
        let block = Block::empty(&serial).map_err(|source| MachineError::Drive {
            id: serial.clone(),
            source,
        })?;
        table.slots.push(block.handle(), None);
        devices.push((format!("empty block slot {index}"), Box::new(block) as _));
    }
    Ok((table, devices))
}

/// ", at most N requests/s, M bytes/s" for a throttled drive.
fn throttle_label(limits: virtio::ThrottleLimits) -> String {
    let mut label = String::new();
    if let Some(iops) = limits.iops {
        label += &format!(", at most {iops} requests/s");
    }
    if let Some(bps) = limits.bps {
        label += &format!(", at most {bps} bytes/s");
    }
    label
}

fn drive_device(drive: &DriveConfig) -> Result<Block, MachineError> {
    let options = BlockOptions {
        path: drive.path.clone(),
        readonly: drive.readonly,
        serial: drive.serial.clone(),
        aio: drive.aio,
        direct: drive.direct,
        num_queues: drive.num_queues,
        throttle: drive.throttle,
    };
    Block::open(&options).map_err(|source| MachineError::Drive {
        id: drive.id.clone(),
        source,
    })
}

impl BlockSlots {
    /// Whether `driver` is a block device model `device_add` puts in a slot.
    pub fn is_block_driver(driver: &str) -> bool {
        BLOCK_DRIVERS.contains(&driver)
    }

    /// `blockdev-add`: opens the image and registers it under its node name.
    pub fn blockdev_add(&mut self, options: &BlockdevOptions) -> Result<(), QmpError> {
        let name = options
            .node_name
            .clone()
            .ok_or_else(|| QmpError::generic("'node-name' must be specified for the root node"))?;
        if self.nodes.contains_key(&name) {
            return Err(QmpError::generic(format!(
                "Duplicate nodes with node-name='{name}'"
            )));
        }
        let (file, inner) = file_options(options)?;
        let readonly =
            options.read_only.unwrap_or(false) || inner.and_then(|o| o.read_only).unwrap_or(false);
        let direct = [Some(options), inner]
            .into_iter()
            .flatten()
            .filter_map(|o| o.cache.and_then(|c| c.direct))
            .any(|d| d);
        let aio = match file.aio {
            Some(BlockdevAio::IoUring) => Aio::IoUring,
            Some(BlockdevAio::Native) => Aio::Native,
            Some(BlockdevAio::Threads) | None => Aio::Off,
        };
        let path = PathBuf::from(&file.filename);
        let disk = RawFile::open_with(&path, readonly, direct).map_err(|e| {
            QmpError::generic(format!(
                "Could not open '{}': {}",
                file.filename,
                os_text(&e)
            ))
        })?;
        log::info!(
            "blockdev-add '{name}': {path:?}{}",
            if readonly { " (read-only)" } else { "" }
        );
        self.nodes.insert(
            name,
            Node {
                path,
                readonly,
                aio,
                direct,
                throttle: virtio::ThrottleLimits::default(),
                disk: Some(Box::new(disk)),
                slot: None,
            },
        );
        Ok(())
    }

    /// `blockdev-del`: drops a node that no device uses (closing its image).
    pub fn blockdev_del(&mut self, name: &str) -> Result<(), QmpError> {
        match self.nodes.get(name) {
            None => Err(QmpError::generic(format!(
                "Failed to find node with node-name='{name}'"
            ))),
            Some(node) if node.slot.is_some() => {
                Err(QmpError::generic(format!("Node {name} is in use")))
            }
            Some(_) => {
                self.nodes.remove(name);
                log::info!("blockdev-del '{name}'");
                Ok(())
            }
        }
    }

    /// `device_add` of a block device model: attaches the node `drive` to the slot `addr`
    /// (a hex number such as `0x1`; the first free slot without it).
    pub fn device_add(&mut self, args: &DeviceAddArgs) -> Result<(), QmpError> {
        let id = new_device_id(args, |id| self.has_device(id))?;
        let drive = args
            .drive
            .as_deref()
            .ok_or_else(|| QmpError::generic("drive property not set"))?;
        let node = self.nodes.get(drive).ok_or_else(|| {
            QmpError::generic(format!(
                "Property '{}.drive' can't find value '{drive}'",
                args.driver
            ))
        })?;
        if node.slot.is_some() {
            return Err(QmpError::generic(format!(
                "Drive '{drive}' is already in use by another device"
            )));
        }
        let index = self.slots.pick("Block", &id, args.addr.as_deref())?;
        self.attach(index, id, drive)
    }

    fn attach(&mut self, index: usize, id: String, drive: &str) -> Result<(), QmpError> {
        let node = self
            .nodes
            .get_mut(drive)
            .ok_or_else(|| QmpError::generic(format!("Failed to find node '{drive}'")))?;
        let disk = node
            .disk
            .take()
            .ok_or_else(|| QmpError::generic(format!("Drive '{drive}' has no image open")))?;
        let slot = &mut self.slots[index];
        if let Err(disk) = slot
            .device
            .attach(disk, node.readonly, node.aio != Aio::Off)
        {
            node.disk = Some(disk);
            return Err(QmpError::generic(format!("Block slot {index:#x} is busy")));
        }
        node.slot = Some(index);
        log::info!(
            "device_add '{id}': node '{drive}' ({:?}) in block slot {index}, {} sectors",
            node.path,
            slot.device.capacity()
        );
        slot.occupant = Some((id, drive.to_owned()));
        Ok(())
    }

    /// Whether one of these slots holds device `id`.
    pub fn has_device(&self, id: &str) -> bool {
        self.slots.has_device(id)
    }

    /// `device_del` of a block device: detaches its node once the requests in flight on it
    /// completed, and returns the `DEVICE_DELETED` event. `None` if no block device has `id`.
    pub fn device_del(&mut self, id: &str) -> Option<Result<Event, QmpError>> {
        let index = self.slots.slot_of(id)?;
        let disk = match self.slots[index].device.detach() {
            Ok(disk) => disk,
            Err(e) => return Some(Err(QmpError::generic(format!("{e}")))),
        };
        let (_, node_name) = self.slots.vacate(id)?;
        if let Some(node) = self.nodes.get_mut(&node_name) {
            node.disk = Some(disk);
            node.slot = None;
        }
        log::info!("device_del '{id}': block slot {index} is empty");
        Some(Ok(device_deleted(id)))
    }

    /// `query-block`: the backends attached to slots.
    pub fn query_block(&self) -> Vec<BlockInfo> {
        self.slots
            .iter()
            .filter_map(|slot| {
                let (id, node_name) = slot.occupant.as_ref()?;
                let node = self.nodes.get(node_name)?;
                Some(block_info(id, node_name, node, slot.device.capacity()))
            })
            .collect()
    }
}

/// A throttling limit as `query-block` reports it (0: none).
fn limit(value: Option<u64>) -> i64 {
    value.map_or(0, |v| i64::try_from(v).unwrap_or(i64::MAX))
}

fn block_info(id: &str, node_name: &str, node: &Node, sectors: u64) -> BlockInfo {
    let file = node.path.display().to_string();
    let size =
        i64::try_from(sectors.saturating_mul(virtio::block::SECTOR_SIZE)).unwrap_or(i64::MAX);
    BlockInfo {
        device: String::new(),
        qdev: Some(id.to_owned()),
        kind: "unknown".to_owned(),
        removable: false,
        locked: false,
        inserted: Some(BlockDeviceInfo {
            file: file.clone(),
            node_name: Some(node_name.to_owned()),
            ro: node.readonly,
            drv: "raw".to_owned(),
            backing_file_depth: 0,
            encrypted: false,
            detect_zeroes: "off".to_owned(),
            bps: limit(node.throttle.bps),
            bps_rd: 0,
            bps_wr: 0,
            iops: limit(node.throttle.iops),
            iops_rd: 0,
            iops_wr: 0,
            image: ImageInfo {
                filename: file,
                format: "raw".to_owned(),
                virtual_size: size,
                actual_size: None,
            },
            write_threshold: 0,
            cache: BlockdevCacheInfo {
                writeback: true,
                direct: node.direct,
                no_flush: false,
            },
        }),
    }
}

/// The `file`/`host_device` options of a node (`raw` over an inline one, or directly), and the
/// inline protocol node's own options when there is one.
fn file_options(
    options: &BlockdevOptions,
) -> Result<(&BlockdevOptionsFile, Option<&BlockdevOptions>), QmpError> {
    match &options.driver {
        BlockdevDriverOptions::File(file) | BlockdevDriverOptions::HostDevice(file) => {
            Ok((file, None))
        }
        BlockdevDriverOptions::Raw(raw) => {
            if raw.offset.unwrap_or(0) != 0 || raw.size.is_some() {
                return Err(QmpError::generic(
                    "raw 'offset' and 'size' are not supported",
                ));
            }
            match &raw.file {
                BlockdevRef::Definition(inner) => match &inner.driver {
                    BlockdevDriverOptions::File(file) | BlockdevDriverOptions::HostDevice(file) => {
                        Ok((file, Some(inner.as_ref())))
                    }
                    BlockdevDriverOptions::Raw(_) => Err(QmpError::generic(
                        "a raw node over another raw node is not supported",
                    )),
                },
                BlockdevRef::Reference(node) => Err(QmpError::generic(format!(
                    "a 'file' reference to node '{node}' is not supported: define the file inline"
                ))),
            }
        }
    }
}

#[cfg(test)]
#[path = "block_slots_tests.rs"]
mod tests;
