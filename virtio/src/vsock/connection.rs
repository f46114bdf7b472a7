//! One stream connection between a guest port and a host Unix socket: where it stands, the
//! credit each side has given the other (virtio spec 5.10.6.3), and the guest's bytes the host
//! peer has not taken yet.
//!
//! Memory per connection is bounded: the struct, plus at most [`BUF_ALLOC`] bytes of guest
//! data waiting for a host peer that reads slowly (held only while it waits). Host-to-guest
//! bytes are never held: they are read from the socket only when the guest has both credit and
//! a receive buffer, straight into that packet.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use super::packet::{Header, Op, SHUTDOWN_BOTH, SHUTDOWN_RCV, SHUTDOWN_SEND};

/// The receive buffer Nimbus gives each connection (`buf_alloc`): the most guest bytes it
/// holds for a host peer that does not read.
pub const BUF_ALLOC: u32 = 64 * 1024;
/// Nimbus tells the guest its new `fwd_cnt` once it moved this far since the last report.
pub const CREDIT_UPDATE_THRESHOLD: u32 = 32 * 1024;

/// Where a connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// A host program asked (`CONNECT <port>`); the guest has not answered the REQUEST.
    LocalInit,
    /// Both ends connected: bytes flow.
    Established,
    /// The host peer left: the guest was told SHUTDOWN and its RST is awaited.
    Closing,
    /// The guest is done (full SHUTDOWN, answered with RST): the bytes it sent are still
    /// being written to the host peer, then the socket closes.
    Draining,
}

/// Control packets owed to the guest; they go before data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Owed {
    pub request: bool,
    pub response: bool,
    pub shutdown: bool,
    pub credit_update: bool,
}

/// Why a connection must be reset.
#[derive(Debug)]
pub(crate) enum ConnError {
    /// The guest sent more than the credit Nimbus gave it.
    CreditExceeded,
    /// The host socket failed.
    Io(io::Error),
}

/// One connection. `local_port` is the host's side, `peer_port` the guest's.
#[derive(Debug)]
pub(crate) struct Connection {
    pub stream: UnixStream,
    pub token: u32,
    pub local_port: u32,
    pub peer_port: u32,
    pub state: State,
    pub owed: Owed,
    /// In the device's list of connections with something for the guest.
    pub queued: bool,
    /// The socket may have bytes (or its end) to read: set by its events, cleared when a
    /// read would block.
    pub readable: bool,
    /// The socket may take bytes: set by its events, cleared when a write would block.
    pub writable: bool,
    /// Guest bytes the host peer has not taken yet.
    pending: Vec<u8>,
    /// Guest bytes written to the host peer (wrapping), as the spec's `fwd_cnt`.
    pub fwd_cnt: u32,
    /// The `fwd_cnt` last told to the guest.
    last_fwd_cnt_sent: u32,
    /// Bytes sent to the guest (wrapping).
    rx_cnt: u32,
    /// The guest's receive buffer and what it consumed of it, from its last packet.
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// SHUTDOWN flags the guest sent.
    pub peer_shutdown: u32,
    /// The guest must answer by then (REQUEST, SHUTDOWN).
    pub deadline: Option<Instant>,
}

impl Connection {
    /// A connection over `stream` in `state`.
    pub fn new(stream: UnixStream, token: u32, local_port: u32, peer_port: u32) -> Connection {
        Connection {
            stream,
            token,
            local_port,
            peer_port,
            state: State::Established,
            owed: Owed::default(),
            queued: false,
            // The socket may hold bytes already (a host program that wrote past its CONNECT
            // line, a peer that wrote at accept): the first read finds out.
            readable: true,
            writable: true,
            pending: Vec::new(),
            fwd_cnt: 0,
            last_fwd_cnt_sent: 0,
            rx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            peer_shutdown: 0,
            deadline: None,
        }
    }

    /// Takes the guest's credit fields from a packet it sent.
    pub fn update_peer_credit(&mut self, hdr: &Header) {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = hdr.fwd_cnt;
    }

    /// Bytes the guest can take now: its buffer less what is in flight. A guest reporting
    /// more consumed than was sent gets nothing until it reports sense.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = self.rx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Whether host bytes may go to the guest now (given a receive buffer).
    fn may_send_data(&self) -> bool {
        self.state == State::Established
            && self.readable
            && self.peer_shutdown & SHUTDOWN_RCV == 0
            && self.peer_credit() > 0
    }

    /// Whether the connection has a packet for the guest.
    pub fn has_packet(&self) -> bool {
        let owed = self.owed;
        owed.request || owed.response || owed.shutdown || owed.credit_update || self.may_send_data()
    }

    /// Stamps `hdr` with this connection's ports, credit and `fwd_cnt`; the guest then knows
    /// the current `fwd_cnt`.
    fn stamp(&mut self, cid: u64, op: Op) -> Header {
        let mut hdr = Header::to_guest(cid, self.local_port, self.peer_port, op);
        hdr.buf_alloc = BUF_ALLOC;
        hdr.fwd_cnt = self.fwd_cnt;
        self.last_fwd_cnt_sent = self.fwd_cnt;
        self.owed.credit_update = false;
        hdr
    }

    /// The next packet for the guest, its payload read into `buf` (at most `buf.len()`
    /// bytes): a control packet owed, else data from the host socket. `None` when there is
    /// nothing (the socket would block). A read of 0 (the host peer left) becomes SHUTDOWN.
    pub fn next_packet(&mut self, cid: u64, buf: &mut [u8]) -> Result<Option<Header>, ConnError> {
        if self.owed.request {
            self.owed.request = false;
            return Ok(Some(self.stamp(cid, Op::Request)));
        }
        if self.owed.response {
            self.owed.response = false;
            return Ok(Some(self.stamp(cid, Op::Response)));
        }
        if self.owed.shutdown {
            self.owed.shutdown = false;
            let mut hdr = self.stamp(cid, Op::Shutdown);
            hdr.flags = SHUTDOWN_BOTH;
            return Ok(Some(hdr));
        }
        if self.may_send_data() && !buf.is_empty() {
            let want = buf.len().min(self.peer_credit() as usize);
            match self.stream.read(&mut buf[..want]) {
                Ok(0) => {
                    self.readable = false;
                    self.state = State::Closing;
                    let mut hdr = self.stamp(cid, Op::Shutdown);
                    hdr.flags = SHUTDOWN_BOTH;
                    return Ok(Some(hdr));
                }
                Ok(n) => {
                    let mut hdr = self.stamp(cid, Op::Rw);
                    hdr.len = n as u32;
                    self.rx_cnt = self.rx_cnt.wrapping_add(n as u32);
                    return Ok(Some(hdr));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.readable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ConnError::Io(e)),
            }
        }
        if self.owed.credit_update {
            return Ok(Some(self.stamp(cid, Op::CreditUpdate)));
        }
        Ok(None)
    }

    /// Takes bytes the guest sent: written to the host peer as far as it takes them, the rest
    /// held. More held than [`BUF_ALLOC`] means the guest ignored its credit.
    pub fn take_guest_bytes(&mut self, data: &[u8]) -> Result<(), ConnError> {
        if self.pending.len() + data.len() > BUF_ALLOC as usize {
            return Err(ConnError::CreditExceeded);
        }
        self.flush()?;
        let written = if self.pending.is_empty() {
            self.write_some(data)?
        } else {
            0
        };
        self.pending.extend_from_slice(&data[written..]);
        self.note_forwarded();
        Ok(())
    }

    /// Writes held bytes to the host peer while it takes them; then, once all are out and the
    /// guest will send no more, half-closes the socket (the peer reads its end).
    pub fn flush(&mut self) -> Result<(), ConnError> {
        if !self.pending.is_empty() {
            let pending = std::mem::take(&mut self.pending);
            let written = self.write_some(&pending)?;
            self.pending = pending;
            self.pending.drain(..written);
            if self.pending.is_empty() {
                // Give the memory back: an idle connection holds no buffer.
                self.pending = Vec::new();
            }
            self.note_forwarded();
        }
        if self.pending.is_empty() && self.peer_shutdown & SHUTDOWN_SEND != 0 {
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        Ok(())
    }

    /// Whether guest bytes still wait for the host peer.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Held bytes (for the memory bound's tests).
    #[cfg(test)]
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Writes what the socket takes of `data` now; counts it as forwarded.
    fn write_some(&mut self, data: &[u8]) -> Result<usize, ConnError> {
        let mut written = 0;
        while written < data.len() && self.writable {
            match self.stream.write(&data[written..]) {
                Ok(0) => self.writable = false,
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.writable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ConnError::Io(e)),
            }
        }
        self.fwd_cnt = self.fwd_cnt.wrapping_add(written as u32);
        Ok(written)
    }

    /// Owes the guest a CREDIT_UPDATE once enough was forwarded since its last report.
    fn note_forwarded(&mut self) {
        if self.fwd_cnt.wrapping_sub(self.last_fwd_cnt_sent) >= CREDIT_UPDATE_THRESHOLD {
            self.owed.credit_update = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn pair() -> (Connection, UnixStream) {
        let (ours, theirs) = UnixStream::pair().expect("pair");
        ours.set_nonblocking(true).expect("nonblocking");
        (Connection::new(ours, 0, 1024, 5000), theirs)
    }

    fn credit(buf_alloc: u32, fwd_cnt: u32) -> Header {
        Header {
            buf_alloc,
            fwd_cnt,
            ..Header::default()
        }
    }

    #[test]
    fn nothing_goes_to_a_guest_without_credit() {
        let (mut conn, mut host) = pair();
        host.write_all(&[7u8; 100]).expect("write");
        conn.readable = true;
        let mut buf = [0u8; 4096];
        assert!(!conn.has_packet(), "no credit yet (buf_alloc 0)");
        conn.update_peer_credit(&credit(40, 0));
        let hdr = conn.next_packet(3, &mut buf).expect("ok").expect("data");
        assert_eq!(
            (hdr.op, hdr.len),
            (Op::Rw as u16, 40),
            "only the credit given"
        );
        assert!(!conn.has_packet(), "credit spent");
        conn.update_peer_credit(&credit(40, 40));
        let hdr = conn.next_packet(3, &mut buf).expect("ok").expect("data");
        assert_eq!(hdr.len, 40);
        assert_eq!(hdr.buf_alloc, BUF_ALLOC);
    }

    #[test]
    fn a_guest_reporting_more_consumed_than_sent_gets_no_credit() {
        let (mut conn, _host) = pair();
        conn.update_peer_credit(&credit(4096, 100));
        assert_eq!(conn.peer_credit(), 0);
    }

    #[test]
    fn bytes_the_host_does_not_take_are_held_up_to_buf_alloc_then_refused() {
        let (mut conn, host) = pair();
        conn.writable = false;
        conn.take_guest_bytes(&vec![1u8; BUF_ALLOC as usize])
            .expect("within credit");
        assert_eq!(conn.pending_len(), BUF_ALLOC as usize);
        assert!(matches!(
            conn.take_guest_bytes(&[1u8]),
            Err(ConnError::CreditExceeded)
        ));
        drop(host);
    }

    #[test]
    fn forwarded_bytes_owe_a_credit_update_past_the_threshold() {
        let (mut conn, mut host) = pair();
        conn.take_guest_bytes(&vec![2u8; CREDIT_UPDATE_THRESHOLD as usize - 1])
            .expect("forward");
        assert!(!conn.owed.credit_update);
        conn.take_guest_bytes(&[2u8]).expect("forward");
        assert!(conn.owed.credit_update);
        let mut buf = [0u8; 16];
        let hdr = conn.next_packet(3, &mut buf).expect("ok").expect("update");
        assert_eq!(
            (hdr.op, hdr.fwd_cnt),
            (Op::CreditUpdate as u16, CREDIT_UPDATE_THRESHOLD)
        );
        let mut got = vec![0u8; CREDIT_UPDATE_THRESHOLD as usize];
        host.read_exact(&mut got).expect("host reads all");
    }

    #[test]
    fn host_end_becomes_a_full_shutdown() {
        let (mut conn, host) = pair();
        drop(host);
        conn.readable = true;
        conn.update_peer_credit(&credit(4096, 0));
        let mut buf = [0u8; 64];
        let hdr = conn
            .next_packet(3, &mut buf)
            .expect("ok")
            .expect("shutdown");
        assert_eq!((hdr.op, hdr.flags), (Op::Shutdown as u16, SHUTDOWN_BOTH));
        assert_eq!(conn.state, State::Closing);
    }
}
