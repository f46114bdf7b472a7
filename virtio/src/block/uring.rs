//! An io_uring submission engine: reads, writes and data syncs on one file descriptor, several
//! in flight, completions signalled on an eventfd registered with the ring.
//!
//! Every buffer handed to the kernel is owned by its in-flight slot until the completion for it
//! has been reaped (or, when the engine is dropped, until every submission has completed).
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use io_uring::{opcode, squeue, types, IoUring};
use log::warn;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::aligned::AlignedBuf;

/// Where a request's iovecs are, for [`Uring::submit_iovecs`]: a copy of the first one and
/// the address and count of all, in a heap array the request owns (so it does not move while
/// the request is in flight).
#[derive(Clone, Copy)]
pub struct IovecsRef {
    first: libc::iovec,
    at: *const libc::iovec,
    count: u32,
}

impl IovecsRef {
    /// `iov`'s place, or `None` if it is empty or too long for one operation.
    pub fn of(iov: &[libc::iovec]) -> Option<IovecsRef> {
        Some(IovecsRef {
            first: *iov.first()?,
            at: iov.as_ptr(),
            count: u32::try_from(iov.len()).ok().filter(|&n| n <= 1024)?,
        })
    }

    /// The first iovec's length (a request is at most a few MiB).
    fn first_len(&self) -> u32 {
        u32::try_from(self.first.iov_len).unwrap_or(u32::MAX)
    }
}

/// What one submission does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoKind {
    /// Fill the buffer from the offset.
    Read,
    /// Write the buffer at the offset.
    Write,
    /// fdatasync, after every earlier submission completed (IOSQE_IO_DRAIN).
    Flush,
}

struct InFlight<T> {
    buf: Option<AlignedBuf>,
    data: T,
}

/// A finished submission: what it carried and the kernel's result (bytes, or -errno).
pub struct Completion<T> {
    /// The caller's data given to [`Uring::submit`].
    pub data: T,
    /// The buffer given to [`Uring::submit`].
    pub buf: Option<AlignedBuf>,
    /// Bytes transferred, or a negative errno.
    pub result: i32,
}

/// An io_uring with at most `capacity` submissions in flight.
pub struct Uring<T> {
    ring: IoUring,
    evt: EventFd,
    slots: Vec<Option<InFlight<T>>>,
    free: Vec<usize>,
}

impl<T> Uring<T> {
    /// A ring for `capacity` requests in flight whose completions write an eventfd.
    pub fn new(capacity: u16) -> io::Result<Uring<T>> {
        let capacity = usize::from(capacity.max(1));
        let ring = IoUring::new(capacity.next_power_of_two() as u32)?;
        let evt = EventFd::new(EFD_NONBLOCK)?;
        ring.submitter().register_eventfd(evt.as_raw_fd())?;
        Ok(Uring {
            ring,
            evt,
            slots: (0..capacity).map(|_| None).collect(),
            free: (0..capacity).rev().collect(),
        })
    }

    /// The eventfd the ring writes when completions are posted.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }

    /// Whether another request can be submitted.
    pub fn has_room(&self) -> bool {
        !self.free.is_empty()
    }

    /// Submissions not reaped yet.
    pub fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Submits `kind` on `fd` at `offset` with `buf` (none for a flush); `data` comes back with
    /// the completion. On error nothing is in flight and `data` is returned with the error.
    pub fn submit(
        &mut self,
        fd: RawFd,
        kind: IoKind,
        offset: u64,
        mut buf: Option<AlignedBuf>,
        data: T,
    ) -> Result<(), (io::Error, T)> {
        let (ptr, len) = match buf.as_mut() {
            Some(b) => (b.as_mut_slice().as_mut_ptr(), b.len()),
            None => (std::ptr::null_mut(), 0),
        };
        let Ok(len) = u32::try_from(len) else {
            return Err((io::Error::from_raw_os_error(libc::EINVAL), data));
        };
        let fd = types::Fd(fd);
        let entry = match kind {
            IoKind::Read => opcode::Read::new(fd, ptr, len).offset(offset).build(),
            IoKind::Write => opcode::Write::new(fd, ptr, len).offset(offset).build(),
            IoKind::Flush => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build()
                .flags(squeue::Flags::IO_DRAIN),
        };
        // `ptr`/`len` describe exactly `buf`, which goes into the slot with `data`, or nothing
        // for a flush.
        self.push(entry, buf, data)
    }

    /// Submits a read or write (`kind`; a flush takes [`Uring::submit`]) of guest memory on
    /// `fd` at `offset`: the iovecs `iov` describes, which `data` owns.
    pub fn submit_iovecs(
        &mut self,
        fd: RawFd,
        kind: IoKind,
        offset: u64,
        iov: IovecsRef,
        data: T,
    ) -> Result<(), (io::Error, T)> {
        let fd = types::Fd(fd);
        let entry = match (kind, iov.count) {
            (IoKind::Read, 1) => {
                { opcode::Read::new(fd, iov.first.iov_base.cast(), iov.first_len()).offset(offset) }
                    .build()
            }
            (IoKind::Write, 1) => {
                opcode::Write::new(fd, iov.first.iov_base.cast(), iov.first_len()).offset(offset)
            }
            .build(),
            (IoKind::Read, n) => opcode::Readv::new(fd, iov.at, n).offset(offset).build(),
            (IoKind::Write, n) => opcode::Writev::new(fd, iov.at, n).offset(offset).build(),
            (IoKind::Flush, _) => return Err((io::Error::from_raw_os_error(libc::EINVAL), data)),
        };
        self.push(entry, None, data)
    }

    /// Puts `entry` in the submission queue under a free slot that keeps `buf` and `data`
    /// until its completion, and submits it.
    fn push(
        &mut self,
        entry: squeue::Entry,
        buf: Option<AlignedBuf>,
        data: T,
    ) -> Result<(), (io::Error, T)> {
        let Some(slot) = self.free.pop() else {
            return Err((io::Error::from_raw_os_error(libc::EBUSY), data));
        };
        let entry = entry.user_data(slot as u64);
        // SAFETY: `push` requires the entry's buffers to stay valid until its completion. They
        // are `buf`, or guest memory described by iovecs that `data` owns, or nothing (a
        // flush). Both are moved into `slots[slot]` below and stay there (their heap
        // allocations do not move with them) until `reap` took that slot's completion, or
        // `drop` waited for every completion; guest RAM stays mapped while the device lives.
        let pushed = unsafe { self.ring.submission().push(&entry) };
        if pushed.is_err() {
            self.free.push(slot);
            return Err((io::Error::from_raw_os_error(libc::EBUSY), data));
        }
        self.slots[slot] = Some(InFlight { buf, data });
        if let Err(e) = self.ring.submit() {
            // The entry stays in the submission queue; the next submit or drop sends it.
            warn!("io_uring submit: {e}");
        }
        Ok(())
    }

    /// Takes every posted completion (and clears the eventfd).
    pub fn reap(&mut self) -> Vec<Completion<T>> {
        let _ = self.evt.read();
        let posted: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        let mut done = Vec::with_capacity(posted.len());
        for (user_data, result) in posted {
            let Some(slot) = usize::try_from(user_data).ok() else {
                continue;
            };
            if let Some(InFlight { buf, data }) = self.slots.get_mut(slot).and_then(Option::take) {
                self.free.push(slot);
                done.push(Completion { data, buf, result });
            }
        }
        done
    }
}

impl<T> Uring<T> {
    /// Waits for every submission in flight and takes all completions (a detaching medium
    /// drains its requests this way).
    pub fn drain(&mut self) -> io::Result<Vec<Completion<T>>> {
        let mut done = Vec::new();
        while self.in_flight() > 0 {
            if let Err(e) = self.ring.submit_and_wait(1) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            done.extend(self.reap());
        }
        Ok(done)
    }
}

impl<T> Drop for Uring<T> {
    fn drop(&mut self) {
        // The kernel may still write into in-flight buffers: wait for them before freeing.
        if let Err(e) = self.drain() {
            warn!("io_uring: cannot wait for in-flight requests: {e}; leaking them");
            std::mem::forget(std::mem::take(&mut self.slots));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io::{Read, Write};
    use std::os::unix::fs::FileExt;
    use std::os::unix::net::UnixStream;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use vmm_sys_util::tempfile::TempFile;

    use super::*;

    fn wait_all<T>(ring: &mut Uring<T>, n: usize) -> Vec<Completion<T>> {
        let mut done = Vec::new();
        while done.len() < n {
            ring.ring.submit_and_wait(1).unwrap();
            done.extend(ring.reap());
        }
        done
    }

    #[test]
    fn several_reads_in_flight_complete_with_their_data() {
        let f = TempFile::new().unwrap();
        let bytes: Vec<u8> = (0..4 * 4096).map(|i| (i / 4096) as u8 + 1).collect();
        f.as_file().write_all_at(&bytes, 0).unwrap();
        let mut ring = Uring::new(4).unwrap();
        let fd = f.as_file().as_raw_fd();
        for i in 0..4u64 {
            let buf = AlignedBuf::new(4096);
            ring.submit(fd, IoKind::Read, i * 4096, Some(buf), i)
                .map_err(|(e, _)| e)
                .unwrap();
        }
        assert!(!ring.has_room());
        for c in wait_all(&mut ring, 4) {
            assert_eq!(c.result, 4096);
            let buf = c.buf.unwrap();
            assert!(buf.as_slice().iter().all(|&b| b == c.data as u8 + 1));
        }
        assert_eq!(ring.in_flight(), 0);
    }

    #[test]
    fn completion_writes_the_eventfd() {
        let f = TempFile::new().unwrap();
        let mut ring = Uring::new(2).unwrap();
        ring.submit(f.as_file().as_raw_fd(), IoKind::Flush, 0, None, ())
            .map_err(|(e, _)| e)
            .unwrap();
        ring.ring.submit_and_wait(1).unwrap();
        assert!(ring.eventfd().read().unwrap() >= 1);
        assert_eq!(ring.reap().len(), 1);
    }

    #[test]
    fn host_errors_come_back_as_negative_results() {
        let f = TempFile::new().unwrap();
        let ro = std::fs::File::open(f.as_path()).unwrap();
        let mut ring = Uring::new(1).unwrap();
        ring.submit(
            ro.as_raw_fd(),
            IoKind::Write,
            0,
            Some(AlignedBuf::new(512)),
            (),
        )
        .map_err(|(e, _)| e)
        .unwrap();
        let c = wait_all(&mut ring, 1);
        assert_eq!(c[0].result, -libc::EBADF);
    }

    /// A 1 MiB file and a ring with eight 4 KiB reads of it in flight, tagged by `tag`.
    fn eight_reads_in_flight<T>(tag: impl Fn(u64) -> T) -> (TempFile, Uring<T>) {
        let f = TempFile::new().unwrap();
        f.as_file().set_len(1 << 20).unwrap();
        let mut ring = Uring::new(8).unwrap();
        for i in 0..8u64 {
            ring.submit(
                f.as_file().as_raw_fd(),
                IoKind::Read,
                i * 4096,
                Some(AlignedBuf::new(4096)),
                tag(i),
            )
            .map_err(|(e, _)| e)
            .unwrap();
        }
        (f, ring)
    }

    #[test]
    fn drain_returns_every_request_in_flight() {
        let (_f, mut ring) = eight_reads_in_flight(|i| i);
        let done = ring.drain().unwrap();
        assert_eq!(done.len(), 8);
        assert!(done.iter().all(|c| c.result == 4096));
        assert_eq!(ring.in_flight(), 0);
    }

    #[test]
    fn dropping_with_requests_in_flight_waits_for_them() {
        // A read from a socket stays in flight until the peer writes, which it does only after
        // a pause: dropping the ring must not return before then, and the read must have
        // taken the bytes (completed, not cancelled).
        let (ours, peer) = UnixStream::pair().unwrap();
        let mut ring = Uring::new(1).unwrap();
        ring.submit(
            ours.as_raw_fd(),
            IoKind::Read,
            0,
            Some(AlignedBuf::new(8)),
            (),
        )
        .map_err(|(e, _)| e)
        .unwrap();
        let written = Arc::new(AtomicBool::new(false));
        let writer = {
            let written = Arc::clone(&written);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(200));
                written.store(true, Ordering::SeqCst);
                (&peer).write_all(b"complete").unwrap();
                peer
            })
        };
        drop(ring);
        assert!(
            written.load(Ordering::SeqCst),
            "drop returned with a read in flight"
        );
        let _peer = writer.join().unwrap();
        ours.set_nonblocking(true).unwrap();
        let left = (&ours).read(&mut [0u8; 8]);
        assert_eq!(left.unwrap_err().kind(), io::ErrorKind::WouldBlock);
    }
}
