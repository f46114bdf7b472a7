//! A recording stand-in for the kernel's vhost devices (and the tap behind vhost-net): each
//! request, in order, with its arguments, answered like the kernel; any request can be made to
//! fail once.
#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use vhost::net::VhostNet as NetOps;
use vhost::vsock::VhostVsock as VsockOps;
use vhost::{
    VhostBackend, VhostUserDirtyLogRegion, VhostUserMemoryRegionBase, VhostUserMemoryRegionInfo,
    VringConfigData,
};
use vmm_sys_util::eventfd::EventFd;

/// One vhost request as the stand-in saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Request {
    SetOwner,
    GetFeatures,
    SetFeatures(u64),
    /// (guest-physical start, size, host address) of each region.
    SetMemTable(Vec<(u64, u64, u64)>),
    SetVringNum(usize, u16),
    /// Queue, (max size, size, flags), (descriptor table, available ring, used ring), log.
    SetVringAddr(usize, (u16, u16, u32), (u64, u64, u64), Option<u64>),
    SetVringBase(usize, u16),
    SetVringCall(usize, RawFd),
    SetVringKick(usize, RawFd),
    SetGuestCid(u64),
    Start,
    Stop,
    /// VHOST_NET_SET_BACKEND: queue, the tap's descriptor (`None`: detach).
    SetBackend(usize, Option<RawFd>),
    /// TUNSETVNETHDRSZ on the tap.
    SetVnetHdrLen(usize),
    /// TUNSETOFFLOAD on the tap.
    SetOffload(u32),
    Other(&'static str),
}

#[derive(Default)]
struct Record {
    calls: Vec<Request>,
    /// Duplicates of the call and kick eventfds handed over, by queue.
    call_fds: Vec<(usize, EventFd)>,
    kick_fds: Vec<(usize, EventFd)>,
    /// The request that fails next, with its errno.
    fail: Option<(&'static str, i32)>,
}

/// A vhost back end that records every request and answers like the kernel.
#[derive(Clone)]
pub(crate) struct Recorder {
    pub(crate) features: u64,
    record: Arc<Mutex<Record>>,
}

impl Recorder {
    pub(crate) fn new(features: u64) -> Recorder {
        Recorder {
            features,
            record: Arc::default(),
        }
    }

    pub(crate) fn calls(&self) -> Vec<Request> {
        self.record.lock().unwrap().calls.clone()
    }

    pub(crate) fn clear(&self) {
        self.record.lock().unwrap().calls.clear();
    }

    /// Makes the next `name` request fail with `errno`.
    pub(crate) fn fail(&self, name: &'static str, errno: i32) {
        self.record.lock().unwrap().fail = Some((name, errno));
    }

    pub(crate) fn call_fd(&self, queue: usize) -> EventFd {
        let record = self.record.lock().unwrap();
        let (_, fd) = record
            .call_fds
            .iter()
            .rev()
            .find(|(q, _)| *q == queue)
            .unwrap();
        fd.try_clone().unwrap()
    }

    pub(crate) fn kick_fd(&self, queue: usize) -> EventFd {
        let record = self.record.lock().unwrap();
        let (_, fd) = record
            .kick_fds
            .iter()
            .rev()
            .find(|(q, _)| *q == queue)
            .unwrap();
        fd.try_clone().unwrap()
    }

    pub(crate) fn log(&self, name: &'static str, call: Request) -> vhost::Result<()> {
        let mut record = self.record.lock().unwrap();
        if let Some((failing, errno)) = record.fail {
            if failing == name {
                record.fail = None;
                return Err(vhost::Error::IoctlError(io::Error::from_raw_os_error(
                    errno,
                )));
            }
        }
        record.calls.push(call);
        Ok(())
    }
}

impl VhostBackend for Recorder {
    fn get_features(&self) -> vhost::Result<u64> {
        self.log("get_features", Request::GetFeatures)?;
        Ok(self.features)
    }

    fn set_features(&self, features: u64) -> vhost::Result<()> {
        self.log("set_features", Request::SetFeatures(features))
    }

    fn set_owner(&self) -> vhost::Result<()> {
        self.log("set_owner", Request::SetOwner)
    }

    fn reset_owner(&self) -> vhost::Result<()> {
        self.log("reset_owner", Request::Other("reset_owner"))
    }

    fn set_mem_table(
        &self,
        regions: &[VhostUserMemoryRegionInfo],
    ) -> vhost::Result<Option<Vec<VhostUserMemoryRegionBase>>> {
        let table = regions
            .iter()
            .map(|r| (r.guest_phys_addr, r.memory_size, r.userspace_addr))
            .collect();
        self.log("set_mem_table", Request::SetMemTable(table))?;
        Ok(None)
    }

    fn set_log_base(&self, _: u64, _: Option<VhostUserDirtyLogRegion>) -> vhost::Result<()> {
        self.log("set_log_base", Request::Other("set_log_base"))
    }

    fn set_log_fd(&self, _: RawFd) -> vhost::Result<()> {
        self.log("set_log_fd", Request::Other("set_log_fd"))
    }

    fn set_vring_num(&self, queue: usize, num: u16) -> vhost::Result<()> {
        self.log("set_vring_num", Request::SetVringNum(queue, num))
    }

    fn set_vring_addr(&self, queue: usize, c: &VringConfigData) -> vhost::Result<()> {
        let sizes = (c.queue_max_size, c.queue_size, c.flags);
        let addrs = (c.desc_table_addr, c.avail_ring_addr, c.used_ring_addr);
        let call = Request::SetVringAddr(queue, sizes, addrs, c.log_addr);
        self.log("set_vring_addr", call)
    }

    fn set_vring_base(&self, queue: usize, base: u16) -> vhost::Result<()> {
        self.log("set_vring_base", Request::SetVringBase(queue, base))
    }

    fn get_vring_base(&self, _: usize) -> vhost::Result<u32> {
        self.log("get_vring_base", Request::Other("get_vring_base"))?;
        Ok(0)
    }

    fn set_vring_call(&self, queue: usize, fd: &EventFd) -> vhost::Result<()> {
        self.log(
            "set_vring_call",
            Request::SetVringCall(queue, fd.as_raw_fd()),
        )?;
        let dup = fd.try_clone().unwrap();
        self.record.lock().unwrap().call_fds.push((queue, dup));
        Ok(())
    }

    fn set_vring_kick(&self, queue: usize, fd: &EventFd) -> vhost::Result<()> {
        self.log(
            "set_vring_kick",
            Request::SetVringKick(queue, fd.as_raw_fd()),
        )?;
        let dup = fd.try_clone().unwrap();
        self.record.lock().unwrap().kick_fds.push((queue, dup));
        Ok(())
    }

    fn set_vring_err(&self, _: usize, _: &EventFd) -> vhost::Result<()> {
        self.log("set_vring_err", Request::Other("set_vring_err"))
    }
}

impl VsockOps for Recorder {
    fn set_guest_cid(&self, cid: u64) -> vhost::Result<()> {
        self.log("set_guest_cid", Request::SetGuestCid(cid))
    }

    fn start(&self) -> vhost::Result<()> {
        self.log("start", Request::Start)
    }

    fn stop(&self) -> vhost::Result<()> {
        self.log("stop", Request::Stop)
    }
}

impl NetOps for Recorder {
    fn set_backend(&self, queue: usize, fd: Option<&File>) -> vhost::Result<()> {
        let fd = fd.map(AsRawFd::as_raw_fd);
        self.log("set_backend", Request::SetBackend(queue, fd))
    }
}
