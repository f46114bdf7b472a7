//! The host side of hybrid vsock (Firecracker's protocol): the Unix socket host programs
//! connect to, the connections it multiplexes onto the device, and the packets owed to the
//! guest.
//!
//! - Host to guest: a program connects to `uds-path` and writes `CONNECT <port>\n`; the guest
//!   gets a REQUEST from host port 2^30 + n; its RESPONSE makes Nimbus answer
//!   `OK <2^30 + n>\n` and bytes flow. A RST, or no answer within [`CONN_TIMEOUT`], closes
//!   the program's socket.
//! - Guest to host: a REQUEST to CID 2 port P connects to `<uds-path>_<P>`; the guest gets a
//!   RESPONSE, or a RST when nothing listens there.
//!
//! Every socket joins the VMM thread's loop when it is opened and leaves it before it is
//! closed, through [`FdChange`]s the device hands to the loop. Sockets are watched
//! edge-triggered: an event sets the connection's readable or writable flag, which only a read
//! or write that would block clears, so a connection waiting for guest credit or buffers costs
//! the loop nothing.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use log::{debug, warn};

use super::connection::{ConnError, Connection, State};
use super::packet::{Header, Malformed, Op, SHUTDOWN_BOTH};
use super::socket::connect_nonblocking;
use super::{FdChange, Readiness};

/// Connections per device; REQUESTs beyond it get a RST.
pub const MAX_CONNECTIONS: usize = 1024;
/// Host programs connected to `uds-path` that have not finished their `CONNECT` line (a burst
/// of connections is accepted at once, before any line is read).
pub const MAX_AWAITING: usize = 256;
/// RSTs for unknown connections held while the guest gives no receive buffers; more are
/// dropped (and counted).
pub const MAX_QUEUED_RSTS: usize = 256;
/// How long the guest has to answer a REQUEST or a SHUTDOWN.
pub const CONN_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest `CONNECT <port>\n` line.
const MAX_CONNECT_LINE: usize = 32;
/// The first host port handed to host-initiated connections (Firecracker's).
const FIRST_LOCAL_PORT: u32 = 1 << 30;

/// Packets and events the device dropped or refused, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VsockCounters {
    /// Packets not from the guest's CID or not to the host's: dropped.
    pub wrong_cid: u64,
    /// Packets with an unknown type or operation, or a bad length: reset.
    pub malformed: u64,
    /// Connections reset because the guest sent beyond its credit.
    pub credit_exceeded: u64,
    /// REQUESTs refused because the connection table was full.
    pub table_full: u64,
    /// RSTs not sent because too many waited for receive buffers.
    pub rsts_dropped: u64,
    /// Descriptor chains that could not hold a packet header.
    pub bad_chains: u64,
}

/// A host program that connected to `uds-path` and is writing its `CONNECT` line.
struct Awaiting {
    stream: UnixStream,
    line: Vec<u8>,
}

/// A connection's key: (host port, guest port).
type Key = (u32, u32);

/// The host side of one hybrid vsock device.
pub(crate) struct Muxer {
    cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    conns: HashMap<Key, Connection>,
    by_token: HashMap<u32, Key>,
    awaiting: HashMap<u32, Awaiting>,
    /// Connections with a packet for the guest, in turn.
    ready: VecDeque<Key>,
    /// RSTs for packets that named no connection.
    rsts: VecDeque<Header>,
    changes: Vec<FdChange>,
    next_token: u32,
    last_local_port: u32,
    pub counters: VsockCounters,
}

impl Muxer {
    /// Serves `listener` (bound at `uds_path`) for the guest `cid`.
    pub fn new(cid: u64, uds_path: PathBuf, listener: UnixListener) -> Muxer {
        Muxer {
            cid,
            uds_path,
            listener,
            conns: HashMap::new(),
            by_token: HashMap::new(),
            awaiting: HashMap::new(),
            ready: VecDeque::new(),
            rsts: VecDeque::new(),
            changes: Vec::new(),
            next_token: 0,
            last_local_port: FIRST_LOCAL_PORT - 1,
            counters: VsockCounters::default(),
        }
    }

    /// The listening socket, watched by the loop for host programs.
    pub fn listener_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    /// The socket path host programs connect to.
    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    /// Open connections (for tests and logs).
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// The sockets opened and closed since the last call, in order.
    pub fn take_changes(&mut self) -> Vec<FdChange> {
        std::mem::take(&mut self.changes)
    }

    /// Whether a packet waits for a receive buffer.
    pub fn has_packet(&self) -> bool {
        !self.rsts.is_empty() || !self.ready.is_empty()
    }

    /// The earliest time a guest must have answered by, if any.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.conns.values().filter_map(|c| c.deadline).min()
    }

    fn new_token(&mut self) -> u32 {
        loop {
            let token = self.next_token;
            self.next_token = (self.next_token + 1) % super::MAX_TOKEN;
            if !self.by_token.contains_key(&token) && !self.awaiting.contains_key(&token) {
                return token;
            }
        }
    }

    fn new_local_port(&mut self) -> u32 {
        loop {
            self.last_local_port = self.last_local_port.wrapping_add(1) | FIRST_LOCAL_PORT;
            let port = self.last_local_port;
            if !self.conns.keys().any(|&(local, _)| local == port) {
                return port;
            }
        }
    }

    /// Puts `key` in the guest's turn when it has a packet and is not there yet.
    fn schedule(&mut self, key: Key) {
        if let Some(conn) = self.conns.get_mut(&key) {
            if !conn.queued && conn.has_packet() {
                conn.queued = true;
                self.ready.push_back(key);
            }
        }
    }

    /// A RST for the connection a guest packet named (no reply to a RST).
    fn queue_rst_for(&mut self, hdr: &Header) {
        if hdr.op == Op::Rst as u16 {
            return;
        }
        self.queue_rst(hdr.dst_port, hdr.src_port);
    }

    fn queue_rst(&mut self, local: u32, peer: u32) {
        if self.rsts.len() >= MAX_QUEUED_RSTS {
            self.counters.rsts_dropped += 1;
            return;
        }
        self.rsts
            .push_back(Header::to_guest(self.cid, local, peer, Op::Rst));
    }

    /// Closes connection `key`'s socket (it leaves the loop first); with `rst`, the guest is
    /// told.
    fn close(&mut self, key: Key, rst: bool) {
        let Some(conn) = self.conns.remove(&key) else {
            return;
        };
        self.by_token.remove(&conn.token);
        if rst {
            self.queue_rst(conn.local_port, conn.peer_port);
        }
        self.changes.push(FdChange::Remove {
            close: OwnedFd::from(conn.stream),
        });
        debug!("vsock: connection {}:{} closed", key.0, key.1);
    }

    /// Adds a new connection over `stream` and watches its socket.
    fn add(&mut self, mut conn: Connection) -> Key {
        let key = (conn.local_port, conn.peer_port);
        conn.token = self.new_token();
        self.by_token.insert(conn.token, key);
        self.changes.push(FdChange::Add {
            fd: conn.stream.as_raw_fd(),
            token: conn.token,
        });
        self.conns.insert(key, conn);
        self.schedule(key);
        key
    }

    // ---- the guest's packets -------------------------------------------------------------

    /// A malformed packet from the guest: the connection it names is reset.
    pub fn on_malformed(&mut self, hdr: &Header, why: Malformed) {
        if self.counters.malformed == 0 {
            warn!(
                "vsock: reset guest port {} after a malformed packet ({why:?}); further ones \
                 are only counted",
                hdr.src_port
            );
        }
        self.counters.malformed += 1;
        debug!("vsock: malformed packet ({why:?}): {hdr:?}");
        let key = (hdr.dst_port, hdr.src_port);
        if self.conns.contains_key(&key) {
            self.close(key, true);
        } else {
            self.queue_rst_for(hdr);
        }
    }

    /// A well-formed packet from the guest, with its payload.
    pub fn on_packet(&mut self, hdr: &Header, op: Op, payload: &[u8]) {
        let key = (hdr.dst_port, hdr.src_port);
        let Some(conn) = self.conns.get_mut(&key) else {
            match op {
                Op::Request => self.guest_connect(hdr),
                Op::Rst => {}
                _ => self.queue_rst_for(hdr),
            }
            return;
        };
        conn.update_peer_credit(hdr);
        let outcome = match (op, conn.state) {
            (Op::Rst, _) => Err(None),
            (Op::Response, State::LocalInit) => {
                conn.state = State::Established;
                conn.deadline = None;
                let ok = format!("OK {}\n", conn.local_port);
                // A fresh socket's buffer takes a line; anything else is a broken peer.
                match conn.stream.write(ok.as_bytes()) {
                    Ok(n) if n == ok.len() => Ok(()),
                    _ => Err(Some(true)),
                }
            }
            (Op::Rw, State::Established) => match conn.take_guest_bytes(payload) {
                Ok(()) => Ok(()),
                Err(ConnError::CreditExceeded) => {
                    self.counters.credit_exceeded += 1;
                    warn!("vsock: guest port {} sent past its credit: reset", key.1);
                    Err(Some(true))
                }
                Err(ConnError::Io(e)) => {
                    debug!("vsock: host socket of {key:?} failed: {e}");
                    Err(Some(true))
                }
            },
            (Op::Shutdown, State::Established | State::LocalInit) => {
                conn.peer_shutdown |= hdr.flags & SHUTDOWN_BOTH;
                if conn.peer_shutdown & SHUTDOWN_BOTH == SHUTDOWN_BOTH {
                    // The guest is done; it gets its RST now, the host the bytes still held.
                    conn.state = State::Draining;
                    self.queue_rst(key.0, key.1);
                    self.drain_or_close(key);
                    return;
                }
                conn.flush().map_err(|_| Some(true))
            }
            (Op::Shutdown, State::Closing) => Err(Some(true)),
            (Op::CreditUpdate, _) => Ok(()),
            (Op::CreditRequest, _) => {
                conn.owed.credit_update = true;
                Ok(())
            }
            // Data after the host left, or for a draining connection: nobody takes it.
            (Op::Rw, State::Closing | State::Draining) => Ok(()),
            // A REQUEST for a live connection, a RESPONSE out of turn, data before RESPONSE.
            _ => Err(Some(true)),
        };
        match outcome {
            Ok(()) => self.schedule(key),
            Err(rst) => self.close(key, rst.unwrap_or(false)),
        }
    }

    /// A draining connection closes once the host peer took every byte.
    fn drain_or_close(&mut self, key: Key) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if conn.flush().is_err() || !conn.has_pending() {
            self.close(key, false);
        }
    }

    /// The guest connects to host port `hdr.dst_port`: `<uds-path>_<port>`.
    fn guest_connect(&mut self, hdr: &Header) {
        if self.conns.len() >= MAX_CONNECTIONS {
            self.counters.table_full += 1;
            self.queue_rst_for(hdr);
            return;
        }
        let mut path = self.uds_path.clone().into_os_string();
        path.push(format!("_{}", hdr.dst_port));
        match connect_nonblocking(Path::new(&path)) {
            Ok(stream) => {
                let mut conn = Connection::new(stream, 0, hdr.dst_port, hdr.src_port);
                conn.update_peer_credit(hdr);
                conn.owed.response = true;
                self.add(conn);
            }
            Err(e) => {
                debug!("vsock: guest connect to {path:?}: {e}");
                self.queue_rst_for(hdr);
            }
        }
    }

    // ---- packets for the guest -------------------------------------------------------------

    /// The next packet for the guest, its payload (at most `buf.len()` bytes) read into `buf`.
    pub fn next_packet(&mut self, buf: &mut [u8]) -> Option<Header> {
        if let Some(rst) = self.rsts.pop_front() {
            return Some(rst);
        }
        while let Some(key) = self.ready.pop_front() {
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            conn.queued = false;
            match conn.next_packet(self.cid, buf) {
                Ok(Some(hdr)) => {
                    if conn.state == State::Closing && conn.deadline.is_none() {
                        conn.deadline = Some(Instant::now() + CONN_TIMEOUT);
                    }
                    self.schedule(key);
                    return Some(hdr);
                }
                Ok(None) => {}
                Err(_) => {
                    self.close(key, true);
                    if let Some(rst) = self.rsts.pop_front() {
                        return Some(rst);
                    }
                }
            }
        }
        None
    }

    // ---- the host's sockets ---------------------------------------------------------------

    /// The listener is readable: accepts every waiting host program.
    pub fn accept_host(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.awaiting.len() >= MAX_AWAITING
                        || self.conns.len() >= MAX_CONNECTIONS
                        || stream.set_nonblocking(true).is_err()
                    {
                        warn!("vsock: too many host connections; one refused");
                        continue;
                    }
                    let token = self.new_token();
                    self.changes.push(FdChange::Add {
                        fd: stream.as_raw_fd(),
                        token,
                    });
                    let line = Vec::with_capacity(MAX_CONNECT_LINE);
                    self.awaiting.insert(token, Awaiting { stream, line });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    warn!("vsock: accepting a host connection failed: {e}");
                    return;
                }
            }
        }
    }

    /// A socket the loop watches for this device is ready.
    pub fn on_socket(&mut self, token: u32, ready: Readiness) {
        if self.awaiting.contains_key(&token) {
            self.read_connect_line(token);
            return;
        }
        let Some(&key) = self.by_token.get(&token) else {
            return;
        };
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if ready.readable || ready.closed {
            conn.readable = true;
        }
        if ready.writable || ready.closed {
            conn.writable = true;
            if conn.state == State::Draining {
                self.drain_or_close(key);
                return;
            }
            if conn.flush().is_err() {
                self.close(key, true);
                return;
            }
        }
        self.schedule(key);
    }

    /// Reads what a host program wrote of its `CONNECT <port>\n`, a byte at a time so that
    /// nothing after the line is taken; the complete line opens a connection to the guest.
    fn read_connect_line(&mut self, token: u32) {
        let Some(waiting) = self.awaiting.get_mut(&token) else {
            return;
        };
        let mut byte = [0u8; 1];
        let port = loop {
            match waiting.stream.read(&mut byte) {
                Ok(1) if byte[0] == b'\n' => break parse_connect(&waiting.line),
                Ok(1) if waiting.line.len() < MAX_CONNECT_LINE => waiting.line.push(byte[0]),
                Ok(_) => break None,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break None,
            }
        };
        let Some(waiting) = self.awaiting.remove(&token) else {
            return;
        };
        let Some(port) = port else {
            debug!("vsock: host program sent no valid CONNECT line: closed");
            self.changes.push(FdChange::Remove {
                close: OwnedFd::from(waiting.stream),
            });
            return;
        };
        let local = self.new_local_port();
        let mut conn = Connection::new(waiting.stream, token, local, port);
        conn.state = State::LocalInit;
        conn.owed.request = true;
        conn.deadline = Some(Instant::now() + CONN_TIMEOUT);
        let key = (local, port);
        self.by_token.insert(token, key);
        self.conns.insert(key, conn);
        self.schedule(key);
    }

    /// Closes connections whose guest did not answer in time (with a RST to the guest).
    pub fn expire(&mut self, now: Instant) {
        let late: Vec<Key> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline.is_some_and(|d| d <= now))
            .map(|(k, _)| *k)
            .collect();
        for key in late {
            debug!("vsock: guest did not answer on {key:?} in time");
            self.close(key, true);
        }
    }

    /// Closes every connection and waiting host program (device reset or transport reset);
    /// the guest is told nothing: it starts afresh.
    pub fn close_all(&mut self) {
        let keys: Vec<Key> = self.conns.keys().copied().collect();
        for key in keys {
            self.close(key, false);
        }
        for (_, waiting) in self.awaiting.drain() {
            self.changes.push(FdChange::Remove {
                close: OwnedFd::from(waiting.stream),
            });
        }
        self.ready.clear();
        self.rsts.clear();
    }
}

/// The port of a `CONNECT <port>` line (the command in any case, as Firecracker reads it).
fn parse_connect(line: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(line).ok()?;
    let mut words = text.split_whitespace();
    let command = words.next()?;
    let port = words.next()?.parse().ok()?;
    (command.eq_ignore_ascii_case("connect") && words.next().is_none()).then_some(port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines_are_read_as_firecracker_reads_them() {
        assert_eq!(parse_connect(b"CONNECT 1024"), Some(1024));
        assert_eq!(parse_connect(b"connect 52"), Some(52));
        assert_eq!(parse_connect(b"CONNECT 4294967295"), Some(u32::MAX));
        assert_eq!(parse_connect(b"CONNECT"), None);
        assert_eq!(parse_connect(b"CONNECT x"), None);
        assert_eq!(parse_connect(b"CONNECT 1 2"), None);
        assert_eq!(parse_connect(b"OPEN 1"), None);
        assert_eq!(parse_connect(b"CONNECT 4294967296"), None);
    }
}
