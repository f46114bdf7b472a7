//! The vhost-user request sequences: the handshake at creation, starting the rings at
//! DRIVER_OK and stopping them at reset, over the `vhost` crate's `Frontend` on the back end's
//! socket (a scripted back end on a socket pair in tests).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use address_space::vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};
use log::warn;
use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserInflight};
use vhost::vhost_user::{
    Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::VhostBackend;
use vhost::{VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::watchdog::Watchdog;
use super::VhostUserError;
use crate::device::feature;

/// Device feature bits (0-23) and the ring features a back end implements; VERSION_1 is the
/// transport's to add. Never PROTOCOL_FEATURES (bit 30, vhost-user's own) nor what the
/// transport cannot do (packed rings, platform access).
const PASSED_THROUGH: u64 =
    ((1 << 24) - 1) | feature(VIRTIO_RING_F_INDIRECT_DESC) | feature(VIRTIO_RING_F_EVENT_IDX);

/// Protocol features Nimbus uses.
fn wanted_protocol() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::INFLIGHT_SHMFD
}

/// The features to offer the guest for a back end offering `backend`.
pub fn offered_features(backend: u64) -> u64 {
    backend & PASSED_THROUGH
}

/// The guest RAM table for the back end, or `None` when a region is not a shared file
/// mapping the back end could map.
pub(crate) fn memory_regions(mem: &GuestMemoryMmap) -> Option<Vec<VhostUserMemoryRegionInfo>> {
    mem.iter()
        .map(|region| VhostUserMemoryRegionInfo::from_guest_region(region).ok())
        .collect()
}

/// The device a setup serves, for messages.
#[derive(Debug, Clone)]
pub struct Ident {
    /// The device type's flag name (`vhost-user-blk-device`).
    pub device: &'static str,
    /// Its `id=`.
    pub id: String,
}

impl Ident {
    fn request_error(&self, request: &'static str, source: vhost::Error) -> VhostUserError {
        VhostUserError::Request {
            device: self.device,
            id: self.id.clone(),
            request,
            source,
        }
    }

    fn unsupported(&self, what: String) -> VhostUserError {
        VhostUserError::Unsupported {
            device: self.device,
            id: self.id.clone(),
            what,
        }
    }
}

/// The inflight-I/O region the back end keeps (protocol feature INFLIGHT_SHMFD): which
/// descriptor chains it took and has not answered yet, in shared memory that outlives it.
pub struct Inflight {
    info: VhostUserInflight,
    file: File,
}

impl Inflight {
    /// The heads of `queue` the back end took and has not answered, and whether the region
    /// says its last completion reached the used ring (`used_idx`, the guest's): see
    /// [`super::rescue`].
    pub fn region(&self, queue: usize) -> Option<InflightQueue> {
        let queues = u64::from(self.info.num_queues);
        let size = usize::from(self.info.queue_size);
        let stride = self.info.mmap_size.checked_div(queues)?;
        if queue as u64 >= queues || stride < (INFLIGHT_HEADER + size * INFLIGHT_DESC) as u64 {
            return None;
        }
        let mut bytes = vec![0u8; INFLIGHT_HEADER + size * INFLIGHT_DESC];
        let offset = self.info.mmap_offset + queue as u64 * stride;
        self.file.read_exact_at(&mut bytes, offset).ok()?;
        let word = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
        let heads = (0..size)
            .filter(|&i| bytes[INFLIGHT_HEADER + i * INFLIGHT_DESC] == 1)
            .map(|i| i as u16)
            .collect();
        Some(InflightQueue {
            last_batch_head: word(12),
            used_idx: word(14),
            heads,
        })
    }
}

/// Bytes before the descriptor states of a queue's inflight region (features, version,
/// desc_num, last_batch_head, used_idx).
const INFLIGHT_HEADER: usize = 16;
/// Bytes of one descriptor's state (inflight, padding, next, counter).
const INFLIGHT_DESC: usize = 16;

/// One queue's part of the inflight region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InflightQueue {
    /// The head the back end answered last (its flag may still be set, see `used_idx`).
    pub last_batch_head: u16,
    /// The used index the back end reached when it last cleared a flag.
    pub used_idx: u16,
    /// Heads marked in flight.
    pub heads: Vec<u16>,
}

/// One back end's connection and what it offered.
pub struct VhostUserSetup {
    frontend: Frontend,
    ident: Ident,
    device_type: u32,
    backend_features: u64,
    protocol: Option<VhostUserProtocolFeatures>,
    watchdog: Arc<Watchdog>,
    limit: Duration,
}

impl VhostUserSetup {
    /// Takes ownership of the back end and negotiates the protocol: its virtio features, the
    /// protocol features both know, and (with MQ) that it serves `queues` queues. Each request
    /// is given `limit` to be answered (see [`Watchdog`]).
    pub fn handshake(
        frontend: Frontend,
        ident: Ident,
        device_type: u32,
        queues: usize,
        watchdog: Arc<Watchdog>,
        limit: Duration,
    ) -> Result<VhostUserSetup, VhostUserError> {
        let mut setup = VhostUserSetup {
            frontend,
            ident,
            device_type,
            backend_features: 0,
            protocol: None,
            watchdog,
            limit,
        };
        setup.ask("SET_OWNER", |f| f.set_owner())?;
        let features = setup.ask("GET_FEATURES", |f| f.get_features())?;
        if features & feature(VIRTIO_F_VERSION_1) == 0 {
            return Err(setup
                .ident
                .unsupported("the back end does not offer VIRTIO_F_VERSION_1".into()));
        }
        setup.backend_features = features;
        if features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
            let offered = setup.ask("GET_PROTOCOL_FEATURES", |f| f.get_protocol_features())?;
            let agreed = offered & wanted_protocol();
            setup.ask("SET_PROTOCOL_FEATURES", |f| f.set_protocol_features(agreed))?;
            setup.protocol = Some(agreed);
        }
        if setup.agreed(VhostUserProtocolFeatures::MQ) {
            let max = setup.ask("GET_QUEUE_NUM", |f| f.get_queue_num())?;
            if (queues as u64) > max {
                return Err(setup.ident.unsupported(format!(
                    "{queues} queues asked, the back end serves at most {max}"
                )));
            }
        }
        Ok(setup)
    }

    /// Makes one request with its deadline armed; a request the watchdog ended is a timeout.
    fn ask<T, E: Into<vhost::Error>>(
        &mut self,
        request: &'static str,
        call: impl FnOnce(&mut Frontend) -> Result<T, E>,
    ) -> Result<T, VhostUserError> {
        let guard = self.watchdog.arm(self.frontend.as_raw_fd(), self.limit);
        let result = call(&mut self.frontend);
        let fired = guard.fired();
        drop(guard);
        result.map_err(|source| {
            if fired {
                VhostUserError::Timeout {
                    device: self.ident.device,
                    id: self.ident.id.clone(),
                    request,
                    limit: self.limit,
                }
            } else {
                self.ident.request_error(request, source.into())
            }
        })
    }

    fn agreed(&self, wanted: VhostUserProtocolFeatures) -> bool {
        self.protocol.is_some_and(|p| p.contains(wanted))
    }

    /// "<device> '<id>'", for messages.
    pub fn name(&self) -> String {
        format!("{} '{}'", self.ident.device, self.ident.id)
    }

    /// The virtio device type.
    pub fn device_type(&self) -> u32 {
        self.device_type
    }

    /// The virtio features the back end offered (PROTOCOL_FEATURES included).
    pub fn backend_features(&self) -> u64 {
        self.backend_features
    }

    /// The back end's configuration space, `size` bytes (GET_CONFIG).
    pub fn read_config(&mut self, size: usize) -> Result<Vec<u8>, VhostUserError> {
        if !self.agreed(VhostUserProtocolFeatures::CONFIG) {
            return Err(self.ident.unsupported(
                "the back end does not serve its configuration (no CONFIG protocol feature)".into(),
            ));
        }
        let buf = vec![0u8; size];
        let (_, config) = self.ask("GET_CONFIG", |f| {
            f.get_config(0, size as u32, VhostUserConfigFlags::empty(), &buf)
        })?;
        Ok(config)
    }

    /// A new inflight region for `queues` queues of `queue_size` entries (GET_INFLIGHT_FD), or
    /// `None` when the back end does not keep one.
    pub fn new_inflight(
        &mut self,
        queues: u16,
        queue_size: u16,
    ) -> Result<Option<Inflight>, VhostUserError> {
        if !self.agreed(VhostUserProtocolFeatures::INFLIGHT_SHMFD) {
            return Ok(None);
        }
        let asked = VhostUserInflight {
            mmap_size: 0,
            mmap_offset: 0,
            num_queues: queues,
            queue_size,
        };
        let (info, file) = self.ask("GET_INFLIGHT_FD", |f| f.get_inflight_fd(&asked))?;
        if info.mmap_size == 0 || info.num_queues != queues || info.queue_size != queue_size {
            return Err(self.ident.unsupported(format!(
                "the back end's inflight region does not fit {queues} queues of {queue_size}"
            )));
        }
        Ok(Some(Inflight { info, file }))
    }

    /// Starts the back end on the guest's rings: the accepted features, the memory table, the
    /// inflight region (if the back end keeps one), and every ready queue from its
    /// `next_avail`. Returns the queues started.
    pub fn start(
        &mut self,
        acked: u64,
        mem: &GuestMemoryMmap,
        queues: &[Queue],
        eventfds: (&[EventFd], &[EventFd]),
        inflight: Option<&Inflight>,
    ) -> Result<Vec<usize>, VhostUserError> {
        let (kicks, calls) = eventfds;
        let protocol_bit =
            self.backend_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        self.ask("SET_FEATURES", |f| f.set_features(acked | protocol_bit))?;
        let regions = memory_regions(mem).ok_or_else(|| VhostUserError::NotShared {
            device: self.ident.device,
            id: self.ident.id.clone(),
        })?;
        self.ask("SET_MEM_TABLE", |f| f.set_mem_table(&regions))?;
        if let Some(region) =
            inflight.filter(|_| self.agreed(VhostUserProtocolFeatures::INFLIGHT_SHMFD))
        {
            let fd = region.file.as_raw_fd();
            self.ask("SET_INFLIGHT_FD", |f| f.set_inflight_fd(&region.info, fd))?;
        }
        let mut started = Vec::new();
        for (index, queue) in queues.iter().enumerate().filter(|(_, q)| q.ready()) {
            let rings = ring_addresses(mem, queue).ok_or_else(|| {
                self.ident
                    .unsupported(format!("queue {index}'s rings are not in guest RAM"))
            })?;
            self.ask("SET_VRING_NUM", |f| f.set_vring_num(index, queue.size()))?;
            self.ask("SET_VRING_ADDR", |f| f.set_vring_addr(index, &rings))?;
            self.ask("SET_VRING_BASE", |f| {
                f.set_vring_base(index, queue.next_avail())
            })?;
            self.ask("SET_VRING_CALL", |f| f.set_vring_call(index, &calls[index]))?;
            self.ask("SET_VRING_KICK", |f| f.set_vring_kick(index, &kicks[index]))?;
            if protocol_bit != 0 {
                self.ask("SET_VRING_ENABLE", |f| f.set_vring_enable(index, true))?;
            }
            started.push(index);
        }
        Ok(started)
    }

    /// Stops the `started` queues (GET_VRING_BASE): the back end leaves the rings alone.
    pub fn stop(&mut self, started: &[usize]) {
        for &index in started {
            if let Err(e) = self.ask("GET_VRING_BASE", |f| f.get_vring_base(index)) {
                warn!("{}: stopping queue {index}: {e}", self.name());
            }
        }
    }
}

/// The queue's ring addresses in Nimbus's address space (vhost-user wants the frontend's
/// virtual addresses, which the memory table maps to guest addresses).
fn ring_addresses(mem: &GuestMemoryMmap, queue: &Queue) -> Option<VringConfigData> {
    let host = |gpa: u64| -> Option<u64> {
        let region = mem.find_region(GuestAddress(gpa))?;
        let offset = gpa.checked_sub(region.start_addr().0)?;
        Some(region.as_ptr() as u64 + offset)
    };
    Some(VringConfigData {
        queue_max_size: queue.max_size(),
        queue_size: queue.size(),
        flags: 0,
        desc_table_addr: host(queue.desc_table())?,
        used_ring_addr: host(queue.used_ring())?,
        avail_ring_addr: host(queue.avail_ring())?,
        log_addr: None,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A region of 2 queues of 4 entries laid out as libvhost-user does (64-byte aligned).
    fn region_file() -> File {
        let path = std::env::temp_dir().join(format!("inflight-{}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        let mut bytes = vec![0u8; 2 * 128];
        // Queue 1: last_batch_head 3, used_idx 7, heads 1 and 3 in flight.
        bytes[128 + 12..128 + 14].copy_from_slice(&3u16.to_le_bytes());
        bytes[128 + 14..128 + 16].copy_from_slice(&7u16.to_le_bytes());
        bytes[128 + INFLIGHT_HEADER + INFLIGHT_DESC] = 1;
        bytes[128 + INFLIGHT_HEADER + 3 * INFLIGHT_DESC] = 1;
        file.write_all_at(&bytes, 0).unwrap();
        file
    }

    fn inflight(mmap_size: u64) -> Inflight {
        Inflight {
            info: VhostUserInflight {
                mmap_size,
                mmap_offset: 0,
                num_queues: 2,
                queue_size: 4,
            },
            file: region_file(),
        }
    }

    #[test]
    fn each_queue_of_the_region_names_its_heads_in_flight() {
        let region = inflight(256);
        assert_eq!(region.region(0).unwrap().heads, Vec::<u16>::new());
        assert_eq!(
            region.region(1),
            Some(InflightQueue {
                last_batch_head: 3,
                used_idx: 7,
                heads: vec![1, 3],
            })
        );
        assert_eq!(region.region(2), None, "no third queue");
    }

    #[test]
    fn a_region_too_small_for_its_queues_is_not_read() {
        assert_eq!(inflight(120).region(0), None);
    }
}
