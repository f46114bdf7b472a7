//! One virtio-blk request: checking a guest's descriptor chain and carrying it out.
//!
//! Every address, length and flag comes from the guest. A chain whose structure cannot be
//! trusted (a loop, longer than the queue, a descriptor table outside RAM; in an indirect table,
//! which virtio-queue follows: a nested table, a table of zero length or not a multiple of 16,
//! a table outside RAM, a loop or a `next` beyond it) is [`Outcome::Malformed`]; a chain without a usable status byte is completed without one; any
//! other mistake, and any host I/O error, completes the request with an error status.

use std::io::{self, Read, Write};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};

use address_space::vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use log::{debug, warn};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Reader, Writer};

use super::aligned::AlignedBuf;
use super::disk::DiskBackend;
use super::guest_io::GuestIovecs;
use super::small::SmallList;
use super::uring::IoKind;
use crate::device::to_u8;

/// Bytes in a virtio-blk sector.
pub const SECTOR_SIZE: u64 = 512;
/// Bytes of a serial number (GET_ID).
pub const ID_BYTES: usize = 20;
/// Segments accepted in one DISCARD or WRITE_ZEROES request (config max_*_seg).
pub const MAX_SEGMENTS: usize = 1;

/// Status values written in the request's last byte.
pub(crate) const S_OK: u8 = to_u8(VIRTIO_BLK_S_OK);
pub(crate) const S_IOERR: u8 = to_u8(VIRTIO_BLK_S_IOERR);
pub(crate) const S_UNSUPP: u8 = to_u8(VIRTIO_BLK_S_UNSUPP);

/// Header bytes: type, reserved (ioprio), sector.
const HEADER_SIZE: usize = 16;
/// Bytes of one DISCARD/WRITE_ZEROES segment: sector, num_sectors, flags.
const SEGMENT_SIZE: usize = 16;
/// Largest bounce buffer between the disk and guest memory.
const CHUNK: usize = 1 << 20;

/// What the device knows when it serves a request.
pub(crate) struct Disk<'a> {
    pub(crate) backend: &'a dyn DiskBackend,
    /// Capacity in sectors.
    pub(crate) capacity: u64,
    pub(crate) readonly: bool,
    pub(crate) serial: &'a [u8; ID_BYTES],
    pub(crate) discard: bool,
    pub(crate) write_zeroes: bool,
    pub(crate) host_errors: &'a HostErrors,
}

/// Host I/O errors (a full or failing disk) of one device. Each fails only its own request;
/// the log gets one line when a run of failures starts and one when a request succeeds again,
/// so a guest retrying against a full disk cannot flood the host's log.
#[derive(Debug, Default)]
pub(crate) struct HostErrors {
    /// Requests failed by the host since the last success.
    failing: AtomicU64,
}

impl HostErrors {
    /// A request failed with `error` on the host.
    fn failed(&self, error: &io::Error) {
        if self.failing.fetch_add(1, Ordering::Relaxed) == 0 {
            warn!(
                "virtio-blk: host I/O error: {error}; the request gets IOERR, and further \
                 errors are counted until a request succeeds"
            );
        }
    }

    /// A request reached the host and succeeded.
    fn succeeded(&self) {
        if self.failing.load(Ordering::Relaxed) == 0 {
            return;
        }
        let failed = self.failing.swap(0, Ordering::Relaxed);
        if failed > 0 {
            warn!("virtio-blk: a request succeeded after {failed} failed on the host");
        }
    }
}

/// How a chain ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A status was written; `used_len` bytes of the chain were written by the device.
    Completed { used_len: u32 },
    /// The chain has no writable status byte in RAM; nothing was written.
    NoStatus,
    /// The chain loops, is longer than the queue or leaves the descriptor table.
    Malformed,
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
enum RequestError {
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    #[error("buffer outside guest RAM")]
    OutsideRam,
    #[error("sectors {sector}+{sectors} beyond capacity {capacity}")]
    OutOfRange {
        sector: u64,
        sectors: u64,
        capacity: u64,
    },
    #[error("write to a read-only disk")]
    ReadOnly,
    #[error("request type {0} not supported")]
    Unsupported(u32),
    #[error("segment flags {0:#x} not supported")]
    UnsupportedFlags(u32),
    #[error("host I/O error")]
    Io(#[source] io::Error),
}

impl RequestError {
    fn status(&self) -> u8 {
        match self {
            RequestError::Unsupported(_) | RequestError::UnsupportedFlags(_) => S_UNSUPP,
            _ => S_IOERR,
        }
    }
}

/// Largest read or write submitted asynchronously; longer ones are served synchronously.
pub(crate) const MAX_ASYNC_BYTES: usize = 4 << 20;

/// What an asynchronous read or write needs once the host completed it.
#[derive(Debug)]
pub(crate) enum AsyncOp {
    /// Read into these guest segments (the data part of the chain): straight, or by copying
    /// the bounce buffer.
    Read { offset: u64, segments: Segments },
    /// Write these guest segments: straight, or from the bounce buffer that holds a copy.
    Write { offset: u64, segments: Segments },
    /// fdatasync.
    Flush,
}

/// A request handed to an asynchronous engine: its head, where its status goes, the I/O and
/// (for reads and writes) either the guest segments' host addresses, which the engine reads
/// or writes directly, or a bounce buffer.
#[derive(Debug)]
pub(crate) struct AsyncRequest {
    pub(crate) head: u16,
    pub(crate) status_addr: GuestAddress,
    pub(crate) op: AsyncOp,
    pub(crate) buf: Option<AlignedBuf>,
    pub(crate) iov: Option<GuestIovecs>,
}

impl AsyncRequest {
    /// The engine operation and file offset.
    pub(crate) fn kind(&self) -> (IoKind, u64) {
        match self.op {
            AsyncOp::Read { offset, .. } => (IoKind::Read, offset),
            AsyncOp::Write { offset, .. } => (IoKind::Write, offset),
            AsyncOp::Flush => (IoKind::Flush, 0),
        }
    }
}

/// How a request started on the asynchronous path.
#[derive(Debug)]
pub(crate) enum Started {
    /// It was served synchronously (or failed) and its status is written.
    Done(Outcome),
    /// Its I/O must be submitted; its status is written by [`finish`].
    Submit(AsyncRequest),
}

/// What `serve` did.
enum Served {
    /// Done; this many data bytes were written to the guest.
    Done(u32),
    /// The I/O is left to an engine, on guest memory or a bounce buffer.
    Async(AsyncOp, Data),
}

/// Where an asynchronous read or write moves its data.
enum Data {
    Guest(GuestIovecs),
    Bounce(AlignedBuf),
    None,
}

/// Serves the request in `chain` and writes its status.
pub(crate) fn execute(
    disk: &Disk<'_>,
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
) -> Outcome {
    match begin(disk, mem, chain, false) {
        Started::Done(outcome) => outcome,
        Started::Submit(request) => {
            // Not reached: synchronous serving never asks for an engine.
            write_status(mem, request.status_addr, S_IOERR, 0)
        }
    }
}

/// Checks the request in `chain`; reads, writes and flushes of at most [`MAX_ASYNC_BYTES`]
/// come back to be submitted, everything else is served now and its status written.
pub(crate) fn start(
    disk: &Disk<'_>,
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
) -> Started {
    begin(disk, mem, chain, true)
}

/// Completes a submitted request whose host I/O returned `result` (bytes or -errno): copies
/// read data to the guest and writes the status. A short transfer is finished synchronously.
pub(crate) fn finish(
    disk: &Disk<'_>,
    mem: &GuestMemoryMmap,
    request: AsyncRequest,
    result: i32,
) -> Outcome {
    let AsyncRequest {
        status_addr,
        op,
        mut buf,
        iov,
        ..
    } = request;
    // O_DIRECT refused the request's alignment: do it all synchronously, as a short transfer.
    let result = match op {
        AsyncOp::Read { .. } | AsyncOp::Write { .. } if result == -libc::EINVAL => 0,
        _ => result,
    };
    if result < 0 {
        disk.host_errors
            .failed(&io::Error::from_raw_os_error(-result));
        return write_status(mem, status_addr, S_IOERR, 0);
    }
    let done = result as usize;
    let outcome = match (op, buf.as_mut()) {
        (AsyncOp::Read { offset, segments }, None) if iov.is_some() => {
            let len: usize = segments.iter().map(|s| s.1).sum();
            if done < len {
                // Short: read it all again through a bounce buffer.
                read_bounced(disk, mem, offset, &segments)
            } else {
                data_len(len)
            }
        }
        (AsyncOp::Write { offset, segments }, None) if iov.is_some() => {
            let len: usize = segments.iter().map(|s| s.1).sum();
            if done < len {
                write_bounced(disk, mem, offset, &segments).map(|()| 0)
            } else {
                Ok(0)
            }
        }
        (AsyncOp::Read { offset, segments }, Some(buf)) => {
            finish_read(disk, mem, offset, &segments, buf.as_mut_slice(), done)
        }
        (AsyncOp::Write { offset, .. }, Some(buf)) => {
            let rest = buf.as_slice().get(done..).unwrap_or_default();
            if rest.is_empty() {
                Ok(0)
            } else {
                disk.backend
                    .write_at(rest, offset + done as u64)
                    .map(|()| 0)
                    .map_err(RequestError::Io)
            }
        }
        (AsyncOp::Flush, _) => Ok(0),
        _ => Err(RequestError::Malformed(
            "asynchronous request without a buffer",
        )),
    };
    match outcome {
        Ok(written) => {
            disk.host_errors.succeeded();
            write_status(mem, status_addr, S_OK, written)
        }
        Err(RequestError::Io(e)) => {
            disk.host_errors.failed(&e);
            write_status(mem, status_addr, S_IOERR, 0)
        }
        Err(e) => {
            warn!("virtio-blk: {e}");
            write_status(mem, status_addr, e.status(), 0)
        }
    }
}

fn finish_read(
    disk: &Disk<'_>,
    mem: &GuestMemoryMmap,
    offset: u64,
    segments: &[(GuestAddress, usize)],
    buf: &mut [u8],
    done: usize,
) -> Result<u32, RequestError> {
    if let Some(rest) = buf.get_mut(done..).filter(|r| !r.is_empty()) {
        disk.backend
            .read_at(rest, offset + done as u64)
            .map_err(RequestError::Io)?;
    }
    let mut at = 0;
    for &(addr, len) in segments {
        let part = buf
            .get(at..at + len)
            .ok_or(RequestError::Malformed("segments longer than the buffer"))?;
        mem.write_slice(part, addr)
            .map_err(|_| RequestError::OutsideRam)?;
        at += len;
    }
    u32::try_from(buf.len()).map_err(|_| RequestError::Malformed("chain longer than 4 GiB"))
}

fn write_status(mem: &GuestMemoryMmap, at: GuestAddress, status: u8, written: u32) -> Outcome {
    if mem.write_obj(status, at).is_err() {
        return Outcome::NoStatus;
    }
    Outcome::Completed {
        used_len: written.saturating_add(1),
    }
}

fn begin(
    disk: &Disk<'_>,
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    allow_async: bool,
) -> Started {
    let head = chain.head_index();
    let Some(descs) = walk(chain.clone()) else {
        return Started::Done(Outcome::Malformed);
    };
    let Some(status_addr) = status_address(mem, &descs) else {
        debug!("virtio-blk: request without a writable status byte dropped");
        return Started::Done(Outcome::NoStatus);
    };
    let (status, written) = match serve(disk, mem, chain, &descs, allow_async) {
        Ok(Served::Async(op, data)) => {
            let (buf, iov) = match data {
                Data::Guest(iov) => (None, Some(iov)),
                Data::Bounce(buf) => (Some(buf), None),
                Data::None => (None, None),
            };
            return Started::Submit(AsyncRequest {
                head,
                status_addr,
                op,
                buf,
                iov,
            });
        }
        Ok(Served::Done(written)) => {
            disk.host_errors.succeeded();
            (S_OK, written)
        }
        Err(RequestError::Io(e)) => {
            disk.host_errors.failed(&e);
            (S_IOERR, 0)
        }
        Err(e) => {
            debug!("virtio-blk: {e}");
            (e.status(), 0)
        }
    };
    Started::Done(write_status(mem, status_addr, status, written))
}

/// A chain's descriptors: inline up to 4 (a request is usually header, data, status).
type Descs = SmallList<Descriptor, 4>;

/// A request's data buffers (guest address, length) in chain order.
pub(crate) type Segments = SmallList<(GuestAddress, usize), 4>;

/// The chain's descriptors, or `None` if it did not end properly (it loops, is longer than the
/// queue, or a descriptor could not be read).
fn walk(chain: DescriptorChain<&GuestMemoryMmap>) -> Option<Descs> {
    let descs: Descs = chain.collect();
    match descs.last() {
        Some(last) if !last.has_next() => Some(descs),
        _ => None,
    }
}

/// Where the status byte goes: the last byte of the last descriptor, if it is device-writable
/// and in RAM.
fn status_address(mem: &GuestMemoryMmap, descs: &[Descriptor]) -> Option<GuestAddress> {
    let last = descs.last()?;
    if !last.is_write_only() || last.len() == 0 {
        return None;
    }
    let addr = last.addr().checked_add(u64::from(last.len()) - 1)?;
    mem.address_in_range(addr).then_some(addr)
}

fn serve(
    disk: &Disk<'_>,
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    descs: &[Descriptor],
    allow_async: bool,
) -> Result<Served, RequestError> {
    check_layout(descs)?;
    let first_writable = descs
        .iter()
        .position(Descriptor::is_write_only)
        .unwrap_or(descs.len());
    let (readable, writable) = descs.split_at(first_writable);
    let header = read_header(mem, readable)?;
    let request_type = le_u32(&header[0..4]);
    let sector = le_u64(&header[8..16]);
    // The status byte is the last writable byte; what comes before it is data.
    let data_in = total_len(writable).saturating_sub(1);
    let data_out = total_len(readable) - HEADER_SIZE;

    // Reads, writes and flushes check RAM as they go, before anything is read or written: the
    // header read, the status byte's address and the data buffers' translation cover every
    // descriptor they accept. The rest check the whole chain first.
    if !matches!(
        request_type,
        VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT | VIRTIO_BLK_T_FLUSH
    ) {
        all_in_ram(mem, descs)?;
    }
    let done = Served::Done;
    match request_type {
        VIRTIO_BLK_T_IN => {
            if data_out != 0 {
                return Err(RequestError::Malformed("device-readable data on a read"));
            }
            let offset = data_range(disk, sector, data_in)?;
            let segments = segments_of(writable, 0, data_in);
            let direct = guest_iovecs(disk, mem, offset, &segments, data_in);
            if direct.is_none() {
                all_in_ram(mem, descs)?;
            }
            if allow_async && data_in <= MAX_ASYNC_BYTES {
                let data = match direct {
                    Some((iov, _)) => Data::Guest(iov),
                    None => Data::Bounce(AlignedBuf::new(data_in)),
                };
                return Ok(Served::Async(AsyncOp::Read { offset, segments }, data));
            }
            read(disk, mem, offset, &segments, direct).map(done)
        }
        VIRTIO_BLK_T_OUT => {
            if data_in != 0 {
                return Err(RequestError::Malformed("device-writable data on a write"));
            }
            if disk.readonly {
                return Err(RequestError::ReadOnly);
            }
            let offset = data_range(disk, sector, data_out)?;
            let segments = segments_of(readable, HEADER_SIZE, data_out);
            let direct = guest_iovecs(disk, mem, offset, &segments, data_out);
            if direct.is_none() {
                all_in_ram(mem, descs)?;
            }
            if allow_async && data_out <= MAX_ASYNC_BYTES {
                let data = match direct {
                    Some((iov, _)) => Data::Guest(iov),
                    None => {
                        let mut buf = AlignedBuf::new(data_out);
                        gather(mem, &segments, buf.as_mut_slice())?;
                        Data::Bounce(buf)
                    }
                };
                return Ok(Served::Async(AsyncOp::Write { offset, segments }, data));
            }
            write(disk, mem, offset, &segments, direct)
                .map(|()| 0)
                .map(done)
        }
        VIRTIO_BLK_T_FLUSH => {
            if data_out != 0 || data_in != 0 {
                return Err(RequestError::Malformed(
                    "data buffers on a request that takes none",
                ));
            }
            if allow_async {
                return Ok(Served::Async(AsyncOp::Flush, Data::None));
            }
            disk.backend.flush().map_err(RequestError::Io)?;
            Ok(done(0))
        }
        VIRTIO_BLK_T_GET_ID => {
            let n = data_in.min(ID_BYTES);
            Writer::new(mem, chain)
                .map_err(|_| RequestError::OutsideRam)?
                .write_all(&disk.serial[..n])
                .map_err(|_| RequestError::OutsideRam)?;
            Ok(done(n as u32))
        }
        VIRTIO_BLK_T_DISCARD if disk.discard && !disk.readonly => {
            segments(disk, &mut past_header(mem, chain)?, data_in, false)?;
            Ok(done(0))
        }
        VIRTIO_BLK_T_WRITE_ZEROES if disk.write_zeroes && !disk.readonly => {
            segments(disk, &mut past_header(mem, chain)?, data_in, true)?;
            Ok(done(0))
        }
        other => Err(RequestError::Unsupported(other)),
    }
}

/// Device-readable descriptors first, then device-writable ones, none empty.
fn check_layout(descs: &[Descriptor]) -> Result<(), RequestError> {
    if descs.iter().any(|d| d.len() == 0) {
        return Err(RequestError::Malformed("zero-length descriptor"));
    }
    let first_writable = descs
        .iter()
        .position(Descriptor::is_write_only)
        .unwrap_or(descs.len());
    if descs[first_writable..].iter().any(|d| !d.is_write_only()) {
        return Err(RequestError::Malformed(
            "device-readable descriptor after a writable one",
        ));
    }
    Ok(())
}

/// Checks a data length and range; returns the byte offset on the disk.
fn data_range(disk: &Disk<'_>, sector: u64, len: usize) -> Result<u64, RequestError> {
    let len = len as u64;
    if len == 0 || len & (SECTOR_SIZE - 1) != 0 {
        return Err(RequestError::Malformed(
            "data length not a non-zero multiple of 512",
        ));
    }
    sector_range(disk, sector, len / SECTOR_SIZE)
}

/// Checks `sectors` sectors from `sector` against the capacity; returns the byte offset.
fn sector_range(disk: &Disk<'_>, sector: u64, sectors: u64) -> Result<u64, RequestError> {
    match sector.checked_add(sectors) {
        Some(end) if end <= disk.capacity => Ok(sector * SECTOR_SIZE),
        _ => Err(RequestError::OutOfRange {
            sector,
            sectors,
            capacity: disk.capacity,
        }),
    }
}

/// Every buffer of the chain in RAM (one lookup for a buffer inside one RAM range, as all are
/// but one across two adjacent ranges), or `OutsideRam`.
fn all_in_ram(mem: &GuestMemoryMmap, descs: &[Descriptor]) -> Result<(), RequestError> {
    let in_ram = |d: &Descriptor| {
        let len = d.len() as usize;
        mem.get_slice(d.addr(), len).is_ok() || mem.check_range(d.addr(), len)
    };
    if descs.iter().all(in_ram) {
        Ok(())
    } else {
        Err(RequestError::OutsideRam)
    }
}

/// Total length of `descs` (each at most 4 GiB, a chain at most 32768 long: no overflow).
fn total_len(descs: &[Descriptor]) -> usize {
    descs.iter().map(|d| d.len() as usize).sum()
}

/// The 16-byte header: the first device-readable bytes, across descriptors if split.
fn read_header(
    mem: &GuestMemoryMmap,
    readable: &[Descriptor],
) -> Result<[u8; HEADER_SIZE], RequestError> {
    let mut header = [0u8; HEADER_SIZE];
    if total_len(readable) < HEADER_SIZE {
        return Err(RequestError::Malformed("header shorter than 16 bytes"));
    }
    let mut at = 0;
    for d in readable {
        let n = (d.len() as usize).min(HEADER_SIZE - at);
        mem.read_slice(&mut header[at..at + n], d.addr())
            .map_err(|_| RequestError::OutsideRam)?;
        at += n;
        if at == HEADER_SIZE {
            break;
        }
    }
    Ok(header)
}

/// A reader of the chain's device-readable bytes after the header.
fn past_header<'a>(
    mem: &'a GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
) -> Result<Reader<'a>, RequestError> {
    let mut reader = Reader::new(mem, chain).map_err(|_| RequestError::OutsideRam)?;
    let mut header = [0u8; HEADER_SIZE];
    reader
        .read_exact(&mut header)
        .map_err(|_| RequestError::OutsideRam)?;
    Ok(reader)
}

/// The guest ranges of `len` bytes of `descs` after their first `skip` bytes.
fn segments_of(descs: &[Descriptor], mut skip: usize, mut len: usize) -> Segments {
    let mut segments = Segments::new();
    for d in descs {
        let d_len = d.len() as usize;
        if skip >= d_len {
            skip -= d_len;
            continue;
        }
        let n = (d_len - skip).min(len);
        if n > 0 {
            // In RAM (checked), so `addr + skip` does not overflow.
            segments.push((d.addr().unchecked_add(skip as u64), n));
        }
        skip = 0;
        len -= n;
        if len == 0 {
            break;
        }
    }
    segments
}

/// The segments' host addresses and the descriptor to move them on, if the image takes guest
/// buffers for this request; `None` (also for a buffer outside RAM) means a bounce buffer.
fn guest_iovecs(
    disk: &Disk<'_>,
    mem: &GuestMemoryMmap,
    offset: u64,
    segments: &[(GuestAddress, usize)],
    len: usize,
) -> Option<(GuestIovecs, RawFd)> {
    let iov = GuestIovecs::new(mem, segments)?;
    let fd = disk
        .backend
        .guest_io_fd(offset, len, iov.sector_aligned())?;
    Some((iov, fd))
}

/// Copies the guest's segments into `buf`.
fn gather(
    mem: &GuestMemoryMmap,
    segments: &[(GuestAddress, usize)],
    buf: &mut [u8],
) -> Result<(), RequestError> {
    let mut at = 0;
    for &(addr, len) in segments {
        let part = buf
            .get_mut(at..at + len)
            .ok_or(RequestError::Malformed("segments longer than the buffer"))?;
        mem.read_slice(part, addr)
            .map_err(|_| RequestError::OutsideRam)?;
        at += len;
    }
    Ok(())
}

fn data_len(len: usize) -> Result<u32, RequestError> {
    u32::try_from(len).map_err(|_| RequestError::Malformed("chain longer than 4 GiB"))
}

/// Reads `segments` from `offset`: straight into guest memory when the image takes it,
/// else through a bounce buffer.
fn read(
    disk: &Disk<'_>,
    mem: &GuestMemoryMmap,
    offset: u64,
    segments: &[(GuestAddress, usize)],
    direct: Option<(GuestIovecs, RawFd)>,
) -> Result<u32, RequestError> {
    if let Some((iov, fd)) = direct {
        match iov.read_from(fd, offset) {
            Ok(()) => return data_len(iov.len()),
            // The file system wants larger alignment than O_DIRECT's sector: bounce.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) => return Err(RequestError::Io(e)),
        }
    }
    read_bounced(disk, mem, offset, segments)
}

/// [`read`] through a bounce buffer of at most [`CHUNK`] bytes.
fn read_bounced(
    disk: &Disk<'_>,
    mem: &GuestMemoryMmap,
    offset: u64,
    segments: &[(GuestAddress, usize)],
) -> Result<u32, RequestError> {
    let len = bounce(segments, |chunk, at, disk_offset| {
        disk.backend
            .read_at(chunk, offset + disk_offset)
            .map_err(RequestError::Io)?;
        mem.write_slice(chunk, at)
            .map_err(|_| RequestError::OutsideRam)
    })?;
    data_len(len)
}

/// Writes `segments` at `offset`: straight from guest memory when the image takes it, else
/// through a bounce buffer.
fn write(
    disk: &Disk<'_>,
    mem: &GuestMemoryMmap,
    offset: u64,
    segments: &[(GuestAddress, usize)],
    direct: Option<(GuestIovecs, RawFd)>,
) -> Result<(), RequestError> {
    if let Some((iov, fd)) = direct {
        match iov.write_to(fd, offset) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) => return Err(RequestError::Io(e)),
        }
    }
    write_bounced(disk, mem, offset, segments)
}

/// [`write`] through a bounce buffer of at most [`CHUNK`] bytes.
fn write_bounced(
    disk: &Disk<'_>,
    mem: &GuestMemoryMmap,
    offset: u64,
    segments: &[(GuestAddress, usize)],
) -> Result<(), RequestError> {
    bounce(segments, |chunk, at, disk_offset| {
        mem.read_slice(chunk, at)
            .map_err(|_| RequestError::OutsideRam)?;
        disk.backend
            .write_at(chunk, offset + disk_offset)
            .map_err(RequestError::Io)
    })
    .map(|_| ())
}

/// Walks `segments` in chunks of at most [`CHUNK`] bytes through one buffer: `each(chunk,
/// guest address, offset from the start of the data)` moves one chunk. Returns the data length.
fn bounce(
    segments: &[(GuestAddress, usize)],
    mut each: impl FnMut(&mut [u8], GuestAddress, u64) -> Result<(), RequestError>,
) -> Result<usize, RequestError> {
    let len: usize = segments.iter().map(|s| s.1).sum();
    let mut buf = vec![0u8; len.min(CHUNK)];
    let mut done = 0u64;
    for &(addr, seg_len) in segments {
        let mut at = 0;
        while at < seg_len {
            let chunk = &mut buf[..(seg_len - at).min(CHUNK)];
            each(chunk, addr.unchecked_add(at as u64), done)?;
            at += chunk.len();
            done += chunk.len() as u64;
        }
    }
    Ok(len)
}

/// DISCARD or WRITE_ZEROES: the segments are the device-readable bytes after the header.
fn segments(
    disk: &Disk<'_>,
    reader: &mut Reader<'_>,
    data_in: usize,
    write_zeroes: bool,
) -> Result<(), RequestError> {
    let len = reader.available_bytes();
    if data_in != 0
        || len == 0
        || len & (SEGMENT_SIZE - 1) != 0
        || len / SEGMENT_SIZE > MAX_SEGMENTS
    {
        return Err(RequestError::Malformed("bad discard/write-zeroes segments"));
    }
    let mut ranges = Vec::with_capacity(len / SEGMENT_SIZE);
    for _ in 0..len / SEGMENT_SIZE {
        let mut segment = [0u8; SEGMENT_SIZE];
        reader
            .read_exact(&mut segment)
            .map_err(|_| RequestError::OutsideRam)?;
        let sector = le_u64(&segment[0..8]);
        let sectors = u64::from(le_u32(&segment[8..12]));
        let flags = le_u32(&segment[12..16]);
        let allowed = if write_zeroes {
            VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
        } else {
            0
        };
        if flags & !allowed != 0 {
            return Err(RequestError::UnsupportedFlags(flags));
        }
        let offset = sector_range(disk, sector, sectors)?;
        ranges.push((
            offset,
            sectors * SECTOR_SIZE,
            flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0,
        ));
    }
    for (offset, bytes, unmap) in ranges.into_iter().filter(|r| r.1 != 0) {
        let result = if write_zeroes {
            disk.backend.write_zeroes(offset, bytes, unmap)
        } else {
            disk.backend.discard(offset, bytes)
        };
        result.map_err(RequestError::Io)?;
    }
    Ok(())
}

fn le_u32(bytes: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[..4]);
    u32::from_le_bytes(b)
}

fn le_u64(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(b)
}
