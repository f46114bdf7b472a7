//! The device driven through its transport by a test driver, with real Unix sockets on the
//! host side. The test plays the event loop: it takes the device's descriptor changes and
//! reports every socket as ready (a spurious event costs the device one read that would block).
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use address_space::vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::packet::{Op, HOST_CID, SHUTDOWN_BOTH, TYPE_STREAM};
use super::*;
use crate::testing::{memory, probe, wr, TestQueue};
use crate::{MmioTransport, Shared};

const CID: u64 = 3;
const RX_BUFS: u64 = 0x10000;
const TX_BUFS: u64 = 0x80000;
const BUF_LEN: u32 = 0x1000;

struct Harness {
    t: MmioTransport,
    dev: Shared<Vsock>,
    mem: Arc<GuestMemoryMmap>,
    rx: TestQueue,
    tx: TestQueue,
    ev: TestQueue,
    /// Receive buffers by head index.
    rx_bufs: HashMap<u32, u64>,
    next_rx: u64,
    rx_seen: u16,
    next_tx: u64,
    tokens: Vec<u32>,
    /// Report every socket as ready after each step (a loop's spurious events); when false,
    /// the device sees only the notifications and the listener.
    fake_events: bool,
    /// Sockets the device closed (dropped once the loop would have stopped watching them).
    closed: usize,
    dir: PathBuf,
    uds: PathBuf,
}

impl Harness {
    fn new(name: &str) -> Harness {
        let dir = std::env::temp_dir().join(format!("nbvs-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let uds = dir.join("v.sock");
        let options = VsockOptions {
            cid: CID,
            uds_path: uds.clone(),
        };
        let dev = Shared::new(Vsock::new(&options).unwrap());
        let mem = memory();
        let interrupt = Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap());
        let mut t = MmioTransport::new(Box::new(dev.clone()), Arc::clone(&mem), interrupt);
        let (rx, tx, ev) = (
            TestQueue::new(16, 0x1000),
            TestQueue::new(16, 0x2000),
            TestQueue::new(16, 0x3000),
        );
        probe(&mut t, &[&rx, &tx, &ev]);
        Harness {
            t,
            dev,
            mem,
            rx,
            tx,
            ev,
            rx_bufs: HashMap::new(),
            next_rx: RX_BUFS,
            rx_seen: 0,
            next_tx: TX_BUFS,
            tokens: Vec::new(),
            fake_events: true,
            closed: 0,
            dir,
            uds,
        }
    }

    /// Posts `n` receive buffers of 4 KiB and notifies the receive queue.
    fn post_rx(&mut self, n: usize) {
        for _ in 0..n {
            let addr = self.next_rx;
            self.next_rx += u64::from(BUF_LEN);
            let head = self.rx.add_chain(&self.mem, &[(addr, BUF_LEN, true)]);
            self.rx_bufs.insert(u32::from(head), addr);
        }
        wr(&mut self.t, 0x50, 0);
        self.settle();
    }

    /// The guest sends `hdr` and `payload` in one readable chain (header split from the
    /// payload, as Linux 6.1 lays it out).
    fn send(&mut self, hdr: Header, payload: &[u8]) {
        let addr = self.next_tx;
        self.next_tx += 0x400 + payload.len() as u64;
        self.mem
            .write_slice(&hdr.to_bytes(), GuestAddress(addr))
            .unwrap();
        self.mem
            .write_slice(payload, GuestAddress(addr + 0x100))
            .unwrap();
        let mut bufs = vec![(addr, HEADER_SIZE as u32, false)];
        if !payload.is_empty() {
            bufs.push((addr + 0x100, payload.len() as u32, false));
        }
        self.tx.add_chain(&self.mem, &bufs);
        wr(&mut self.t, 0x50, 1);
        self.settle();
    }

    fn guest_packet(&self, src_port: u32, dst_port: u32, op: Op) -> Header {
        Header {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            kind: TYPE_STREAM,
            op: op as u16,
            buf_alloc: 64 * 1024,
            ..Header::default()
        }
    }

    /// Plays the loop: applies descriptor changes, reports the listener and every socket.
    fn settle(&mut self) {
        for _ in 0..4 {
            self.apply_changes();
            self.t.device_event(LISTENER);
            self.apply_changes();
            if !self.fake_events {
                continue;
            }
            for token in self.tokens.clone() {
                let ready = Readiness {
                    readable: true,
                    writable: true,
                    closed: false,
                };
                self.t.device_fd_event(token, ready);
            }
        }
        self.apply_changes();
    }

    fn apply_changes(&mut self) {
        for change in self.t.take_device_fd_changes() {
            match change {
                FdChange::Add { token, .. } => self.tokens.push(token),
                FdChange::Remove { close } => {
                    drop(close);
                    self.closed += 1;
                }
            }
        }
    }

    /// Packets the guest received since the last call.
    fn received(&mut self) -> Vec<(Header, Vec<u8>)> {
        let mut out = Vec::new();
        while self.rx_seen != self.rx.used_idx(&self.mem) {
            let (head, len) = self.rx.used_elem(&self.mem, self.rx_seen);
            self.rx_seen = self.rx_seen.wrapping_add(1);
            let addr = self.rx_bufs[&head];
            let mut bytes = vec![0u8; len as usize];
            self.mem.read_slice(&mut bytes, GuestAddress(addr)).unwrap();
            let hdr = Header::from_bytes(bytes[..HEADER_SIZE].try_into().unwrap());
            out.push((hdr, bytes[HEADER_SIZE..].to_vec()));
        }
        out
    }

    fn ops(&mut self) -> Vec<u16> {
        self.received().iter().map(|(h, _)| h.op).collect()
    }

    /// A host program asks for guest port `port`; returns its socket.
    fn host_connect(&mut self, port: u32) -> UnixStream {
        let mut host = UnixStream::connect(&self.uds).unwrap();
        host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        writeln!(host, "CONNECT {port}").unwrap();
        self.settle();
        host
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn read_line(stream: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while stream.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    String::from_utf8(line).unwrap()
}

#[test]
fn config_space_holds_the_guest_cid_and_three_queues() {
    let h = Harness::new("config");
    let mut cid = [0u8; 8];
    h.dev.lock().read_config(0, &mut cid);
    assert_eq!(u64::from_le_bytes(cid), CID);
    assert_eq!(h.dev.lock().queue_max_sizes().len(), 3);
    assert_eq!(h.dev.lock().device_type(), 19);
}

#[test]
fn host_connect_is_answered_ok_once_the_guest_accepts_and_bytes_flow_both_ways() {
    let mut h = Harness::new("h2g");
    h.post_rx(8);
    let mut host = h.host_connect(1024);
    let got = h.received();
    assert_eq!(got.len(), 1, "{got:?}");
    let req = got[0].0;
    assert_eq!(req.op, Op::Request as u16);
    assert_eq!((req.src_cid, req.dst_cid), (HOST_CID, CID));
    assert_eq!((req.src_port, req.dst_port), (1 << 30, 1024));
    h.send(h.guest_packet(1024, 1 << 30, Op::Response), &[]);
    assert_eq!(read_line(&mut host), "OK 1073741824");
    host.write_all(b"hello").unwrap();
    h.settle();
    let got = h.received();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (got[0].0.op, got[0].1.as_slice()),
        (Op::Rw as u16, &b"hello"[..])
    );
    let mut rw = h.guest_packet(1024, 1 << 30, Op::Rw);
    rw.len = 5;
    h.send(rw, b"world");
    let mut buf = [0u8; 5];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"world");
    // The host leaves: the guest is told SHUTDOWN, answers RST, the socket is closed.
    drop(host);
    h.settle();
    let got = h.received();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (got[0].0.op, got[0].0.flags),
        (Op::Shutdown as u16, SHUTDOWN_BOTH)
    );
    h.send(h.guest_packet(1024, 1 << 30, Op::Rst), &[]);
    assert_eq!(h.dev.lock().connection_count(), 0);
    assert_eq!(h.closed, 1);
}

#[test]
fn bytes_a_host_program_wrote_right_after_its_connect_line_reach_the_guest() {
    let mut h = Harness::new("early");
    h.fake_events = false;
    h.post_rx(8);
    let mut host = UnixStream::connect(&h.uds).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // One write, so one readiness edge: the line and the bytes after it.
    host.write_all(b"CONNECT 1024\nearly").unwrap();
    h.settle();
    assert_eq!(h.tokens.len(), 1, "accepted");
    let edge = Readiness {
        readable: true,
        ..Readiness::default()
    };
    h.t.device_fd_event(h.tokens[0], edge);
    assert_eq!(h.ops(), vec![Op::Request as u16]);
    // No socket event from here on: only the guest's RESPONSE.
    h.send(h.guest_packet(1024, 1 << 30, Op::Response), &[]);
    assert_eq!(read_line(&mut host), "OK 1073741824");
    let got = h.received();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (got[0].0.op, got[0].1.as_slice()),
        (Op::Rw as u16, &b"early"[..])
    );
}

#[test]
fn guest_refusal_or_silence_closes_the_host_socket() {
    let mut h = Harness::new("refuse");
    h.post_rx(8);
    let mut host = h.host_connect(99);
    assert_eq!(h.ops(), vec![Op::Request as u16]);
    h.send(h.guest_packet(99, 1 << 30, Op::Rst), &[]);
    let mut buf = [0u8; 8];
    assert_eq!(host.read(&mut buf).unwrap(), 0, "closed without OK");
    let mut host = h.host_connect(98);
    assert_eq!(h.ops(), vec![Op::Request as u16]);
    h.dev.lock().muxer.expire(Instant::now() + CONN_TIMEOUT * 2);
    h.settle();
    assert_eq!(h.ops(), vec![Op::Rst as u16], "the guest is told");
    assert_eq!(host.read(&mut buf).unwrap(), 0, "closed without OK");
}

#[test]
fn a_burst_of_host_programs_all_get_their_connection() {
    let mut h = Harness::new("burst");
    let hosts: Vec<UnixStream> = (0..100)
        .map(|port| {
            let mut host = UnixStream::connect(&h.uds).unwrap();
            writeln!(host, "CONNECT {port}").unwrap();
            host
        })
        .collect();
    h.settle();
    assert_eq!(h.dev.lock().connection_count(), hosts.len());
    assert_eq!(h.closed, 0);
}

#[test]
fn bad_connect_lines_are_closed() {
    let mut h = Harness::new("badline");
    let mut host = UnixStream::connect(&h.uds).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    host.write_all(b"HELLO there\n").unwrap();
    h.settle();
    let mut buf = [0u8; 8];
    assert_eq!(host.read(&mut buf).unwrap(), 0);
    assert_eq!(h.closed, 1);
}

#[test]
fn guest_connect_reaches_the_port_socket_or_is_reset() {
    let mut h = Harness::new("g2h");
    h.post_rx(8);
    let listener = UnixListener::bind(h.dir.join("v.sock_5000")).unwrap();
    h.send(h.guest_packet(777, 5000, Op::Request), &[]);
    assert_eq!(h.ops(), vec![Op::Response as u16]);
    let (mut peer, _) = listener.accept().unwrap();
    let mut rw = h.guest_packet(777, 5000, Op::Rw);
    rw.len = 3;
    h.send(rw, b"abc");
    let mut buf = [0u8; 3];
    peer.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"abc");
    h.send(h.guest_packet(778, 5001, Op::Request), &[]);
    let got = h.received();
    assert_eq!(got[0].0.op, Op::Rst as u16, "nothing listens on 5001");
    assert_eq!((got[0].0.src_port, got[0].0.dst_port), (5001, 778));
    // A full guest shutdown: RST back, the host peer sees its end.
    let mut shut = h.guest_packet(777, 5000, Op::Shutdown);
    shut.flags = SHUTDOWN_BOTH;
    h.send(shut, &[]);
    assert_eq!(h.ops(), vec![Op::Rst as u16]);
    assert_eq!(peer.read(&mut buf).unwrap(), 0);
}

#[test]
fn host_bytes_reach_the_guest_only_within_its_credit() {
    let mut h = Harness::new("credit");
    h.post_rx(8);
    let listener = UnixListener::bind(h.dir.join("v.sock_6000")).unwrap();
    let mut req = h.guest_packet(1, 6000, Op::Request);
    req.buf_alloc = 1000;
    h.send(req, &[]);
    let (mut peer, _) = listener.accept().unwrap();
    assert_eq!(h.ops(), vec![Op::Response as u16]);
    peer.write_all(&[9u8; 3000]).unwrap();
    h.settle();
    let got = h.received();
    let total: usize = got.iter().map(|(_, p)| p.len()).sum();
    assert_eq!(total, 1000, "only buf_alloc bytes");
    let mut update = h.guest_packet(1, 6000, Op::CreditUpdate);
    update.buf_alloc = 1000;
    update.fwd_cnt = 1000;
    h.send(update, &[]);
    let total: usize = h.received().iter().map(|(_, p)| p.len()).sum();
    assert_eq!(
        total, 1000,
        "the next 1000 after the guest consumed the first"
    );
}

#[test]
fn packets_not_between_the_guest_and_the_host_are_dropped_and_counted() {
    let mut h = Harness::new("cid");
    h.post_rx(8);
    let mut hdr = h.guest_packet(1, 5000, Op::Request);
    hdr.src_cid = 42;
    h.send(hdr, &[]);
    let mut hdr = h.guest_packet(1, 5000, Op::Request);
    hdr.dst_cid = 7;
    h.send(hdr, &[]);
    assert!(h.received().is_empty(), "no reply");
    assert_eq!(h.dev.lock().counters().wrong_cid, 2);
}

#[test]
fn malformed_packets_and_credit_lies_reset_only_their_connection() {
    let mut h = Harness::new("hostile");
    h.post_rx(16);
    let listener = UnixListener::bind(h.dir.join("v.sock_5000")).unwrap();
    h.send(h.guest_packet(1, 5000, Op::Request), &[]);
    h.send(h.guest_packet(2, 5000, Op::Request), &[]);
    assert_eq!(h.ops(), vec![Op::Response as u16; 2]);
    let (mut good, _) = listener.accept().unwrap();
    let (_silent, _) = listener.accept().unwrap();
    // Unknown op, unknown type, a length past the chain: RST each.
    let mut bad = h.guest_packet(9, 5000, Op::Rw);
    bad.op = 99;
    h.send(bad, &[]);
    let mut bad = h.guest_packet(9, 5000, Op::Rw);
    bad.kind = 2;
    h.send(bad, &[]);
    let mut bad = h.guest_packet(9, 5000, Op::Rw);
    bad.len = 60000;
    h.send(bad, &[0u8; 100]);
    assert_eq!(h.ops(), vec![Op::Rst as u16; 3]);
    // Connection 2's host peer never reads: past 64 KiB held, the guest is reset.
    let chunk = vec![5u8; 32 * 1024];
    let mut rst_seen = false;
    for _ in 0..40 {
        let mut rw = h.guest_packet(2, 5000, Op::Rw);
        rw.len = chunk.len() as u32;
        h.send(rw, &chunk);
        let got = h.received();
        if got
            .iter()
            .any(|(hdr, _)| hdr.op == Op::Rst as u16 && hdr.dst_port == 2)
        {
            rst_seen = true;
            break;
        }
        h.post_rx(got.len());
    }
    assert!(rst_seen, "the credit lie was reset");
    assert_eq!(h.dev.lock().counters().credit_exceeded, 1);
    assert_eq!(h.dev.lock().counters().malformed, 3);
    // Connection 1 still works.
    let mut rw = h.guest_packet(1, 5000, Op::Rw);
    rw.len = 2;
    h.send(rw, b"ok");
    let mut buf = [0u8; 2];
    good.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ok");
}

#[test]
fn transport_reset_closes_connections_and_posts_the_event() {
    let mut h = Harness::new("reset");
    h.post_rx(4);
    let ev_buf = 0xf0000;
    h.ev.add_chain(&h.mem, &[(ev_buf, 4, true)]);
    h.mem
        .write_obj(0xffff_ffffu32, GuestAddress(ev_buf))
        .unwrap();
    let mut host = h.host_connect(1024);
    h.dev.lock().transport_reset();
    h.settle();
    assert_eq!(h.ev.used_idx(&h.mem), 1);
    assert_eq!(h.ev.used_elem(&h.mem, 0).1, 4);
    let id: u32 = h.mem.read_obj(GuestAddress(ev_buf)).unwrap();
    assert_eq!(id, 0, "VIRTIO_VSOCK_EVENT_TRANSPORT_RESET");
    let mut buf = [0u8; 4];
    assert_eq!(host.read(&mut buf).unwrap(), 0);
}
