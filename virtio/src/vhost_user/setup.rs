//! The vhost-user request sequences: the handshake at creation, starting the rings at
//! DRIVER_OK and stopping them at reset, over the `vhost` crate's `Frontend` on the back end's
//! socket (a scripted back end on a socket pair in tests).

use address_space::vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};
use log::warn;
use vhost::vhost_user::message::VhostUserConfigFlags;
use vhost::vhost_user::{
    Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::VhostBackend;
use vhost::{VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::VhostUserError;
use crate::device::feature;

/// Device feature bits (0-23) and the ring features a back end implements; VERSION_1 is the
/// transport's to add. Never PROTOCOL_FEATURES (bit 30, vhost-user's own) nor what the
/// transport cannot do (packed rings, platform access).
const PASSED_THROUGH: u64 =
    ((1 << 24) - 1) | feature(VIRTIO_RING_F_INDIRECT_DESC) | feature(VIRTIO_RING_F_EVENT_IDX);

/// Protocol features Nimbus uses.
fn wanted_protocol() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::CONFIG
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

/// One back end's connection and what it offered.
pub struct VhostUserSetup {
    frontend: Frontend,
    device: &'static str,
    id: String,
    device_type: u32,
    backend_features: u64,
    protocol: Option<VhostUserProtocolFeatures>,
}

impl VhostUserSetup {
    /// Takes ownership of the back end and negotiates the protocol: its virtio features, the
    /// protocol features both know, and (with MQ) that it serves `queues` queues.
    pub fn handshake(
        mut frontend: Frontend,
        device: &'static str,
        id: &str,
        device_type: u32,
        queues: usize,
    ) -> Result<VhostUserSetup, VhostUserError> {
        let err = |request| {
            let id = id.to_string();
            move |source| VhostUserError::Request {
                device,
                id,
                request,
                source,
            }
        };
        let unsupported = |what: String| VhostUserError::Unsupported {
            device,
            id: id.to_string(),
            what,
        };
        frontend.set_owner().map_err(err("SET_OWNER"))?;
        let backend_features = frontend.get_features().map_err(err("GET_FEATURES"))?;
        if backend_features & feature(VIRTIO_F_VERSION_1) == 0 {
            return Err(unsupported(
                "the back end does not offer VIRTIO_F_VERSION_1".into(),
            ));
        }
        let protocol = if backend_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0
        {
            let offered = frontend
                .get_protocol_features()
                .map_err(err("GET_PROTOCOL_FEATURES"))?;
            let agreed = offered & wanted_protocol();
            frontend
                .set_protocol_features(agreed)
                .map_err(err("SET_PROTOCOL_FEATURES"))?;
            Some(agreed)
        } else {
            None
        };
        if let Some(protocol) = protocol {
            if protocol.contains(VhostUserProtocolFeatures::MQ) {
                let max = frontend.get_queue_num().map_err(err("GET_QUEUE_NUM"))?;
                if (queues as u64) > max {
                    return Err(unsupported(format!(
                        "{queues} queues asked, the back end serves at most {max}"
                    )));
                }
            }
        }
        Ok(VhostUserSetup {
            frontend,
            device,
            id: id.to_string(),
            device_type,
            backend_features,
            protocol,
        })
    }

    /// "<device> '<id>'", for messages.
    pub fn name(&self) -> String {
        format!("{} '{}'", self.device, self.id)
    }

    /// The virtio device type.
    pub fn device_type(&self) -> u32 {
        self.device_type
    }

    /// The virtio features the back end offered (PROTOCOL_FEATURES included).
    pub fn backend_features(&self) -> u64 {
        self.backend_features
    }

    fn request_error(&self, request: &'static str) -> impl FnOnce(vhost::Error) -> VhostUserError {
        let (device, id) = (self.device, self.id.clone());
        move |source| VhostUserError::Request {
            device,
            id,
            request,
            source,
        }
    }

    /// The back end's configuration space, `size` bytes (GET_CONFIG).
    pub fn read_config(&mut self, size: usize) -> Result<Vec<u8>, VhostUserError> {
        if !self
            .protocol
            .is_some_and(|p| p.contains(VhostUserProtocolFeatures::CONFIG))
        {
            return Err(VhostUserError::Unsupported {
                device: self.device,
                id: self.id.clone(),
                what: "the back end does not serve its configuration (no CONFIG protocol \
                       feature)"
                    .into(),
            });
        }
        let buf = vec![0u8; size];
        let err = self.request_error("GET_CONFIG");
        let (_, config) = self
            .frontend
            .get_config(0, size as u32, VhostUserConfigFlags::empty(), &buf)
            .map_err(err)?;
        Ok(config)
    }

    /// Starts the back end on the guest's rings: the accepted features, the memory table, and
    /// every ready queue. Returns the queues started.
    pub fn start(
        &mut self,
        acked: u64,
        mem: &GuestMemoryMmap,
        queues: &[Queue],
        kicks: &[EventFd],
        calls: &[EventFd],
    ) -> Result<Vec<usize>, VhostUserError> {
        let protocol_bit =
            self.backend_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        let err = |s: &Self, r| s.request_error(r);
        self.frontend
            .set_features(acked | protocol_bit)
            .map_err(err(self, "SET_FEATURES"))?;
        let regions = memory_regions(mem).ok_or_else(|| VhostUserError::NotShared {
            device: self.device,
            id: self.id.clone(),
        })?;
        self.frontend
            .set_mem_table(&regions)
            .map_err(err(self, "SET_MEM_TABLE"))?;
        let mut started = Vec::new();
        for (index, queue) in queues.iter().enumerate().filter(|(_, q)| q.ready()) {
            let rings = ring_addresses(mem, queue).ok_or_else(|| VhostUserError::Unsupported {
                device: self.device,
                id: self.id.clone(),
                what: format!("queue {index}'s rings are not in guest RAM"),
            })?;
            let f = &mut self.frontend;
            f.set_vring_num(index, queue.size())
                .map_err(err(self, "SET_VRING_NUM"))?;
            let f = &mut self.frontend;
            f.set_vring_addr(index, &rings)
                .map_err(err(self, "SET_VRING_ADDR"))?;
            let f = &mut self.frontend;
            f.set_vring_base(index, queue.next_avail())
                .map_err(err(self, "SET_VRING_BASE"))?;
            let f = &mut self.frontend;
            f.set_vring_call(index, &calls[index])
                .map_err(err(self, "SET_VRING_CALL"))?;
            let f = &mut self.frontend;
            f.set_vring_kick(index, &kicks[index])
                .map_err(err(self, "SET_VRING_KICK"))?;
            if protocol_bit != 0 {
                let f = &mut self.frontend;
                f.set_vring_enable(index, true)
                    .map_err(err(self, "SET_VRING_ENABLE"))?;
            }
            started.push(index);
        }
        Ok(started)
    }

    /// Stops the `started` queues (GET_VRING_BASE): the back end leaves the rings alone.
    pub fn stop(&mut self, started: &[usize]) {
        for &index in started {
            if let Err(e) = self.frontend.get_vring_base(index) {
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
