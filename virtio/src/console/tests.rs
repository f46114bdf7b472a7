use super::*;
use crate::testing::{memory, probe, TestQueue};
use crate::MmioTransport;
use address_space::vm_memory::{Bytes, GuestAddress};
use std::io;
use std::sync::Mutex;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const RX_BASE: u64 = 0x1000;
const TX_BASE: u64 = 0x4000;
const BUF: u64 = 0x8000;

/// An output that takes at most `room` bytes, then answers WouldBlock.
#[derive(Clone, Default)]
struct Out(Arc<Mutex<(Vec<u8>, usize)>>);

impl Out {
    fn with_room(room: usize) -> Out {
        Out(Arc::new(Mutex::new((Vec::new(), room))))
    }
    fn taken(&self) -> Vec<u8> {
        self.0.lock().expect("lock").0.clone()
    }
    fn add_room(&self, n: usize) {
        self.0.lock().expect("lock").1 += n;
    }
}

impl Write for Out {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut s = self.0.lock().expect("lock");
        if s.1 == 0 {
            return Err(ErrorKind::WouldBlock.into());
        }
        let n = s.1.min(data.len());
        s.0.extend_from_slice(&data[..n]);
        s.1 -= n;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct Rig {
    t: MmioTransport,
    console: crate::Shared<Console>,
    mem: Arc<GuestMemoryMmap>,
    rx: TestQueue,
    tx: TestQueue,
}

fn rig(out: Out) -> Rig {
    let mem = memory();
    let console = crate::Shared::new(Console::new(Box::new(out)));
    let interrupt = Interrupt::new(EventFd::new(EFD_NONBLOCK).expect("eventfd"));
    let mut t = MmioTransport::new(Box::new(console.clone()), Arc::clone(&mem), interrupt);
    let (rx, tx) = (TestQueue::new(16, RX_BASE), TestQueue::new(16, TX_BASE));
    probe(&mut t, &[&rx, &tx]);
    Rig {
        t,
        console,
        mem,
        rx,
        tx,
    }
}

fn notify(t: &mut MmioTransport, queue: u32) {
    crate::testing::wr(t, 0x50, queue);
}

fn send(r: &mut Rig, at: u64, bytes: &[u8]) {
    r.mem.write_slice(bytes, GuestAddress(at)).expect("write");
    r.tx.add_chain(&r.mem, &[(at, bytes.len() as u32, false)]);
    notify(&mut r.t, 1);
}

#[test]
fn output_reaches_the_chardev_and_the_chain_is_used() {
    let out = Out::with_room(usize::MAX);
    let mut r = rig(out.clone());
    send(&mut r, BUF, b"hello\n");
    assert_eq!(out.taken(), b"hello\n");
    assert_eq!(r.tx.used_idx(&r.mem), 1);
    assert_eq!(r.console.lock().counters().output_bytes, 6);
}

#[test]
fn full_chardev_stalls_the_port_until_it_has_room() {
    let out = Out::with_room(3);
    let mut r = rig(out.clone());
    send(&mut r, BUF, b"abcdef");
    send(&mut r, BUF + 0x100, b"gh");
    assert_eq!(out.taken(), b"abc");
    assert_eq!(r.tx.used_idx(&r.mem), 0, "the first chain waits");
    assert!(r.console.lock().output_stalled());
    // A notification while stalled takes nothing more.
    notify(&mut r.t, 1);
    assert_eq!(r.tx.used_idx(&r.mem), 0);
    out.add_room(100);
    r.console.lock().resume_output();
    assert_eq!(out.taken(), b"abcdefgh");
    assert_eq!(r.tx.used_idx(&r.mem), 2);
    assert!(!r.console.lock().output_stalled());
}

#[test]
fn input_fills_receive_buffers_and_waits_for_more() {
    let mut r = rig(Out::with_room(usize::MAX));
    r.console.lock().queue_input(b"ls\n");
    r.rx.add_chain(&r.mem, &[(BUF, 2, true)]);
    notify(&mut r.t, 0);
    assert_eq!(r.rx.used_elem(&r.mem, 0).1, 2);
    r.rx.add_chain(&r.mem, &[(BUF + 0x100, 64, true)]);
    notify(&mut r.t, 0);
    assert_eq!(r.rx.used_elem(&r.mem, 1).1, 1);
    let mut got = [0u8; 3];
    r.mem
        .read_slice(&mut got[..2], GuestAddress(BUF))
        .expect("read");
    r.mem
        .read_slice(&mut got[2..], GuestAddress(BUF + 0x100))
        .expect("read");
    assert_eq!(&got, b"ls\n");
}

#[test]
fn input_beyond_the_limit_is_dropped_and_counted() {
    let r = rig(Out::with_room(usize::MAX));
    r.console
        .lock()
        .queue_input(&vec![b'x'; MAX_PENDING_INPUT + 10]);
    assert_eq!(r.console.lock().counters().input_dropped, 10);
}

#[test]
fn chains_outside_ram_are_used_empty_and_the_port_goes_on() {
    let out = Out::with_room(usize::MAX);
    let mut r = rig(out.clone());
    r.tx.add_chain(&r.mem, &[(0xfff_0000, 64, false)]);
    send(&mut r, BUF, b"ok");
    assert_eq!(r.tx.used_idx(&r.mem), 2);
    assert_eq!(out.taken(), b"ok");
    r.rx.add_chain(&r.mem, &[(0xfff_0000, 64, true)]);
    r.rx.add_chain(&r.mem, &[(BUF, 8, true)]);
    r.console.lock().queue_input(b"in");
    assert_eq!(r.rx.used_idx(&r.mem), 2);
    assert_eq!(r.rx.used_elem(&r.mem, 0).1, 0);
    assert_eq!(r.rx.used_elem(&r.mem, 1).1, 2);
}

#[test]
fn looping_chain_does_not_hang_the_device() {
    let out = Out::with_room(usize::MAX);
    let mut r = rig(out.clone());
    // Descriptor 0 points to itself.
    r.tx.write_desc(&r.mem, 0, BUF, 4, crate::testing::F_NEXT, 0);
    r.tx.publish(&r.mem, 0);
    notify(&mut r.t, 1);
    assert!(out.taken().len() <= MAX_CHAIN_BYTES);
}

#[test]
fn config_space_says_one_port() {
    let console = Console::new(Box::new(io::sink()));
    let mut data = [0u8; 4];
    console.read_config(4, &mut data);
    assert_eq!(u32::from_le_bytes(data), 1);
    assert_eq!(console.features(), 0);
    assert_eq!(console.queue_max_sizes().len(), 2);
}
