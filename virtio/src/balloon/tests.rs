use super::*;
use crate::testing::{memory, probe, rd, wr, TestQueue, MEM_SIZE};
use crate::MmioTransport;
use address_space::vm_memory::Bytes;
use std::sync::Mutex;

/// RAM is the test memory minus its first 64 KiB (rings and request buffers live there, and
/// page numbers below it count as "not RAM"); discards are recorded.
#[derive(Default)]
struct Recorder {
    discarded: Mutex<Vec<(u64, u64)>>,
}

const RAM_START: u64 = 0x1_0000;

impl Discard for Recorder {
    fn is_ram(&self, gpa: u64, len: u64) -> bool {
        gpa >= RAM_START
            && gpa.is_multiple_of(PAGE)
            && len.is_multiple_of(PAGE)
            && len > 0
            && gpa.checked_add(len).is_some_and(|end| end <= MEM_SIZE)
    }

    fn discard(&self, gpa: u64, len: u64) -> Result<(), String> {
        self.discarded.lock().expect("lock").push((gpa, len));
        Ok(())
    }

    fn ram_end(&self) -> u64 {
        MEM_SIZE
    }
}

const PFNS: u64 = 0x8000;

struct Rig {
    t: MmioTransport,
    mem: Arc<GuestMemoryMmap>,
    queues: Vec<TestQueue>,
    ram: Arc<Recorder>,
    balloon: crate::Shared<Balloon>,
}

fn rig(options: BalloonOptions) -> Rig {
    let ram = Arc::new(Recorder::default());
    let balloon = Balloon::new(options, MEM_SIZE, ram.clone()).expect("balloon");
    let balloon = crate::Shared::new(balloon);
    let mem = memory();
    let interrupt = Interrupt::new(EventFd::new(EFD_NONBLOCK).expect("eventfd"));
    let mut t = MmioTransport::new(Box::new(balloon.clone()), Arc::clone(&mem), interrupt);
    let count = balloon.lock().queue_max_sizes().len();
    let queues: Vec<TestQueue> = (0..count)
        .map(|i| TestQueue::new(16, 0x1000 * (i as u64 + 1)))
        .collect();
    let refs: Vec<&TestQueue> = queues.iter().collect();
    probe(&mut t, &refs);
    Rig {
        t,
        mem,
        queues,
        ram,
        balloon,
    }
}

impl Rig {
    /// Sends `pfns` on queue `q` as one request at `at`.
    fn send(&mut self, q: usize, at: u64, pfns: &[u32]) {
        let bytes: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
        self.mem
            .write_slice(&bytes, GuestAddress(at))
            .expect("write");
        self.queues[q].add_chain(&self.mem, &[(at, bytes.len() as u32, false)]);
        wr(&mut self.t, 0x50, q as u32);
    }

    fn discarded(&self) -> Vec<(u64, u64)> {
        self.ram.discarded.lock().expect("lock").clone()
    }

    fn counters(&self) -> BalloonCounters {
        self.balloon.lock().counters()
    }
}

#[test]
fn inflate_discards_contiguous_pages_in_one_run_and_deflate_takes_them_back() {
    let mut r = rig(BalloonOptions::default());
    r.send(0, PFNS, &[0x20, 0x21, 0x22, 0x40]);
    assert_eq!(r.queues[0].used_idx(&r.mem), 1);
    assert_eq!(r.discarded(), [(0x20_000, 0x3000), (0x40_000, 0x1000)]);
    assert_eq!(r.balloon.lock().inflated_pages(), 4);
    r.send(1, PFNS + 0x100, &[0x21, 0x40]);
    assert_eq!(r.queues[1].used_idx(&r.mem), 1);
    let c = r.counters();
    assert_eq!((c.inflated_pages, c.deflated_pages, c.ignored()), (4, 2, 0));
    assert_eq!(r.balloon.lock().inflated_pages(), 2);
}

#[test]
fn pages_outside_ram_and_repeated_pages_are_ignored_and_counted() {
    let mut r = rig(BalloonOptions::default());
    r.send(0, PFNS, &[0x20, 0x20, 0x1, u32::MAX, 0x100_000]);
    r.send(0, PFNS + 0x100, &[0x20]);
    r.send(1, PFNS + 0x200, &[0x30]);
    assert_eq!(r.discarded(), [(0x20_000, 0x1000)]);
    let c = r.counters();
    assert_eq!(c.inflated_pages, 1);
    assert_eq!(c.ignored_repeated, 2);
    assert_eq!(c.ignored_outside_ram, 3);
    assert_eq!(c.ignored_not_inflated, 1);
}

#[test]
fn malformed_requests_are_dropped_counted_and_completed() {
    let mut r = rig(BalloonOptions::default());
    // Six bytes: not whole page numbers.
    r.mem
        .write_slice(&[0x20, 0, 0, 0, 0x21, 0], GuestAddress(PFNS))
        .expect("w");
    r.queues[0].add_chain(&r.mem, &[(PFNS, 6, false)]);
    // A buffer outside RAM, and one far too long.
    r.queues[0].add_chain(&r.mem, &[(0xfff_0000, 8, false)]);
    r.queues[0].add_chain(&r.mem, &[(0, MAX_PFN_BYTES as u32 + 4, false)]);
    wr(&mut r.t, 0x50, 0);
    assert_eq!(r.queues[0].used_idx(&r.mem), 3, "every request completed");
    assert!(r.discarded().is_empty());
    assert_eq!(r.counters().dropped_requests, 3);
    // The device carries on.
    r.send(0, PFNS, &[0x20]);
    assert_eq!(r.discarded(), [(0x20_000, 0x1000)]);
}

#[test]
fn target_sets_num_pages_and_guest_actual_is_reported_once() {
    let mut r = rig(BalloonOptions::default());
    r.balloon.lock().set_target(MEM_SIZE - 0x10_000);
    assert_eq!(rd(&mut r.t, 0x100), 16, "num_pages");
    assert_ne!(rd(&mut r.t, 0x60) & crate::INT_CONFIG_CHANGE, 0);
    r.balloon.lock().set_target(MEM_SIZE * 2);
    assert_eq!(
        rd(&mut r.t, 0x100),
        0,
        "a target above RAM asks for nothing"
    );
    wr(&mut r.t, 0x104, 16);
    assert_eq!(rd(&mut r.t, 0x104), 16);
    assert_eq!(r.balloon.lock().take_change(), Some(MEM_SIZE - 0x10_000));
    assert_eq!(r.balloon.lock().take_change(), None);
    wr(&mut r.t, 0x104, 16);
    assert_eq!(
        r.balloon.lock().take_change(),
        None,
        "same value: no change"
    );
    // num_pages is read-only.
    wr(&mut r.t, 0x100, 99);
    assert_eq!(rd(&mut r.t, 0x100), 0);
}

#[test]
fn reporting_queue_follows_stats_and_discards_reported_ranges() {
    let mut r = rig(BalloonOptions {
        free_page_reporting: true,
        ..BalloonOptions::default()
    });
    assert_eq!(r.queues.len(), 4);
    r.queues[3].add_chain(&r.mem, &[(0x20_000, 0x4000, true), (0x80, 0x1000, true)]);
    wr(&mut r.t, 0x50, 3);
    assert_eq!(r.queues[3].used_idx(&r.mem), 1);
    assert_eq!(r.discarded(), [(0x20_000, 0x4000)]);
    let c = r.counters();
    assert_eq!((c.reported_bytes, c.ignored_outside_ram), (0x4000, 1));
}

#[test]
fn reporting_is_queue_two_without_stats() {
    assert_eq!(role(2, feature(F_REPORTING)), Some(Role::Reporting));
    assert_eq!(
        role(2, feature(F_REPORTING) | feature(F_STATS_VQ)),
        Some(Role::Stats)
    );
    assert_eq!(role(3, feature(F_STATS_VQ)), None);
}

#[test]
fn stats_are_kept_with_qemu_names_and_the_buffer_goes_back_when_polled() {
    let mut r = rig(BalloonOptions::default());
    let mut buf = Vec::new();
    for (tag, value) in [(4u16, 1000u64), (5, 4096), (99, 7)] {
        buf.extend(tag.to_le_bytes());
        buf.extend(value.to_le_bytes());
    }
    r.mem.write_slice(&buf, GuestAddress(PFNS)).expect("w");
    r.queues[2].add_chain(&r.mem, &[(PFNS, buf.len() as u32, false)]);
    wr(&mut r.t, 0x50, 2);
    assert_eq!(r.queues[2].used_idx(&r.mem), 0, "the buffer is held");
    let stats = r.balloon.lock().guest_stats();
    assert_eq!(stats.stats["stat-free-memory"], 1000);
    assert_eq!(stats.stats["stat-total-memory"], 4096);
    assert_eq!(stats.stats["stat-swap-in"], -1);
    assert_eq!(stats.stats.len(), STAT_NAMES.len());
    assert!(stats.last_update > 0);
    r.balloon.lock().set_poll_interval(2);
    std::thread::sleep(Duration::from_millis(20));
    r.t.device_event(0);
    assert_eq!(r.queues[2].used_idx(&r.mem), 1, "polling gives it back");
}

#[test]
fn features_follow_the_options() {
    let r = rig(BalloonOptions::default());
    let plain = r.balloon.lock().features();
    assert_eq!(plain, feature(F_STATS_VQ));
    let all = rig(BalloonOptions {
        id: None,
        deflate_on_oom: true,
        free_page_reporting: true,
    });
    assert_eq!(
        all.balloon.lock().features(),
        feature(F_STATS_VQ) | feature(F_DEFLATE_ON_OOM) | feature(F_REPORTING)
    );
}

#[test]
fn a_stats_buffer_queued_before_driver_ok_is_served_on_the_loop_after_activation() {
    let ram = Arc::new(Recorder::default());
    let balloon = crate::Shared::new(
        Balloon::new(BalloonOptions::default(), MEM_SIZE, ram).expect("balloon"),
    );
    let mem = memory();
    let interrupt = Interrupt::new(EventFd::new(EFD_NONBLOCK).expect("eventfd"));
    let mut t = MmioTransport::new(Box::new(balloon.clone()), Arc::clone(&mem), interrupt);
    let mut queues: Vec<TestQueue> = (0..3)
        .map(|i| TestQueue::new(16, 0x1000 * (i as u64 + 1)))
        .collect();
    crate::testing::negotiate(&mut t, |f| f);
    for (i, q) in queues.iter().enumerate() {
        q.setup(&mut t, i as u32);
    }
    let entry: Vec<u8> = 5u16
        .to_le_bytes()
        .into_iter()
        .chain(4096u64.to_le_bytes())
        .collect();
    mem.write_slice(&entry, GuestAddress(PFNS)).expect("w");
    queues[2].add_chain(&mem, &[(PFNS, entry.len() as u32, false)]);
    wr(&mut t, 0x50, 2);
    let status = rd(&mut t, 0x70);
    wr(&mut t, 0x70, status | crate::mmio::STATUS_DRIVER_OK);
    assert_eq!(
        balloon.lock().guest_stats().last_update,
        0,
        "not on the vCPU"
    );
    t.device_event(1);
    assert_eq!(
        balloon.lock().guest_stats().stats["stat-total-memory"],
        4096
    );
}

#[test]
fn a_looping_chain_ends_at_the_queue_size_and_the_device_carries_on() {
    let mut r = rig(BalloonOptions::default());
    r.mem
        .write_slice(&0x20u32.to_le_bytes(), GuestAddress(PFNS))
        .expect("w");
    // Descriptor 0 names itself as next: a loop.
    r.queues[0].write_desc(&r.mem, 0, PFNS, 4, crate::testing::F_NEXT, 0);
    r.queues[0].publish(&r.mem, 0);
    wr(&mut r.t, 0x50, 0);
    assert_eq!(r.queues[0].used_idx(&r.mem), 1, "completed");
    let c = r.counters();
    assert_eq!(c.inflated_pages, 1);
    assert!(c.ignored_repeated <= 15, "{c:?}");
    r.send(1, PFNS + 0x100, &[0x20]);
    assert_eq!(r.counters().deflated_pages, 1);
}

#[test]
fn a_target_set_before_the_driver_comes_is_read_at_probe() {
    let ram = Arc::new(Recorder::default());
    let balloon = crate::Shared::new(
        Balloon::new(BalloonOptions::default(), MEM_SIZE, ram).expect("balloon"),
    );
    balloon.lock().set_target(MEM_SIZE - 8 * PAGE);
    let mem = memory();
    let interrupt = Interrupt::new(EventFd::new(EFD_NONBLOCK).expect("eventfd"));
    let mut t = MmioTransport::new(Box::new(balloon.clone()), Arc::clone(&mem), interrupt);
    let queues: Vec<TestQueue> = (0..3)
        .map(|i| TestQueue::new(16, 0x1000 * (i as u64 + 1)))
        .collect();
    probe(&mut t, &queues.iter().collect::<Vec<_>>());
    assert_eq!(rd(&mut t, 0x100), 8);
    assert_eq!(balloon.lock().actual_bytes(), MEM_SIZE);
}
