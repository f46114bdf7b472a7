//! The handshake against a scripted back end on a socket pair: each request the frontend sends
//! is answered as the script says, so that hostile replies (a reply to another request,
//! features never offered, a configuration longer than asked, descriptors where none belong)
//! can be shown to fail cleanly. A reply shorter than its header says, or none at all, is
//! ended by the watchdog at the request's deadline.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;
use std::time::Duration;

use address_space::vm_memory::{GuestAddress, GuestMemoryMmap};
use vhost::vhost_user::Frontend;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::*;

const GET_FEATURES: u32 = 1;
const GET_PROTOCOL_FEATURES: u32 = 15;
const GET_QUEUE_NUM: u32 = 17;
const GET_CONFIG: u32 = 24;
/// Reply flags: version 1, reply.
const REPLY: u32 = 0x1 | 0x4;
const VERSION_1: u64 = 1 << 32;
const PROTOCOL_FEATURES: u64 = 1 << 30;
/// MQ | CONFIG.
const PROTOCOLS: u64 = 0x1 | 0x200;

/// What the scripted back end answers to one request (by its number and payload).
type Script = Box<dyn FnMut(u32, &[u8]) -> Option<Answer> + Send>;

/// A reply: its payload, an optional descriptor to attach, the request code to claim, and
/// the payload size to claim in the header.
struct Answer {
    body: Vec<u8>,
    with_fd: bool,
    code: Option<u32>,
    claimed_len: Option<u32>,
}

fn answer(body: Vec<u8>) -> Option<Answer> {
    Some(Answer {
        body,
        with_fd: false,
        code: None,
        claimed_len: None,
    })
}

fn answer_as(code: u32, reply: Answer) -> Option<Answer> {
    Some(Answer {
        code: Some(code),
        ..reply
    })
}

/// A well-behaved disk back end's answers, which a test then spoils.
fn good_disk(request: u32, payload: &[u8]) -> Option<Answer> {
    match request {
        GET_FEATURES => answer((VERSION_1 | PROTOCOL_FEATURES).to_le_bytes().to_vec()),
        GET_PROTOCOL_FEATURES => answer(PROTOCOLS.to_le_bytes().to_vec()),
        GET_QUEUE_NUM => answer(4u64.to_le_bytes().to_vec()),
        GET_CONFIG => {
            let mut body = payload.to_vec();
            body[12..20].copy_from_slice(&2048u64.to_le_bytes());
            answer(body)
        }
        _ => None,
    }
}

/// Serves `script` on one end of a socket pair until the frontend hangs up.
fn back_end(mut script: Script) -> (UnixStream, JoinHandle<()>) {
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    let thread = std::thread::spawn(move || loop {
        let mut hdr = [0u8; 12];
        if theirs.read_exact(&mut hdr).is_err() {
            return;
        }
        let request = u32::from_le_bytes(hdr[0..4].try_into().unwrap());
        let size = u32::from_le_bytes(hdr[8..12].try_into().unwrap());
        let mut payload = vec![0u8; size as usize];
        if theirs.read_exact(&mut payload).is_err() {
            return;
        }
        let Some(reply) = script(request, &payload) else {
            continue;
        };
        let code = reply.code.unwrap_or(request);
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&code.to_le_bytes());
        bytes.extend_from_slice(&REPLY.to_le_bytes());
        let len = reply.claimed_len.unwrap_or(reply.body.len() as u32);
        bytes.extend_from_slice(&len.to_le_bytes());
        bytes.extend_from_slice(&reply.body);
        if reply.with_fd {
            let evt = EventFd::new(0).unwrap();
            let _ = theirs.send_with_fd(&bytes[..], evt.as_raw_fd());
        } else if theirs.write_all(&bytes).is_err() {
            return;
        }
    });
    (ours, thread)
}

fn disk_options() -> VhostUserOptions {
    VhostUserOptions {
        id: "vub0".into(),
        socket: PathBuf::from("/scripted"),
        kind: VhostUserKind::Blk { num_queues: 1 },
        reconnect: None,
    }
}

/// One watchdog thread for every test of the process.
fn watchdog() -> Arc<Watchdog> {
    static DOG: std::sync::OnceLock<Arc<Watchdog>> = std::sync::OnceLock::new();
    DOG.get_or_init(|| {
        let dog = Watchdog::new();
        let served = dog.clone();
        std::thread::spawn(move || served.serve());
        dog
    })
    .clone()
}

fn memory() -> Arc<GuestMemoryMmap> {
    Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap())
}

/// The device over the scripted back end, each reply awaited at most `limit`.
fn connect(script: Script, limit: Duration) -> Result<VhostUser, VhostUserError> {
    let (stream, _thread) = back_end(script);
    let frontend = Frontend::from_stream(stream, 1);
    VhostUser::with_frontend(&disk_options(), frontend, memory(), watchdog(), limit)
}

fn failure(script: Script) -> String {
    let Err(err) = connect(script, Duration::from_secs(5)) else {
        panic!("the hostile back end was accepted");
    };
    let mut text = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

#[test]
fn a_well_behaved_back_end_gives_its_configuration_and_features() {
    let device = connect(Box::new(good_disk), Duration::from_secs(5)).expect("handshake");
    let mut capacity = [0u8; 8];
    device.read_config(0, &mut capacity);
    assert_eq!(u64::from_le_bytes(capacity), 2048);
    assert_eq!(
        device.features(),
        0,
        "VERSION_1 is the transport's; bit 30 never offered"
    );
    assert_eq!(device.device_type(), 2);
}

#[test]
fn a_reply_to_another_request_is_refused() {
    let err = failure(Box::new(|request, payload| {
        let reply = good_disk(request, payload)?;
        if request == GET_FEATURES {
            // GET_PROTOCOL_FEATURES's code on GET_FEATURES's answer.
            return answer_as(GET_PROTOCOL_FEATURES, reply);
        }
        Some(reply)
    }));
    assert!(err.contains("GET_FEATURES"), "{err}");
}

#[test]
fn a_configuration_longer_than_asked_is_refused() {
    let err = failure(Box::new(|request, payload| {
        let mut reply = good_disk(request, payload)?;
        if request == GET_CONFIG {
            reply.body.extend_from_slice(&[0u8; 16]);
            let longer = (reply.body.len() - 12) as u32;
            reply.body[4..8].copy_from_slice(&longer.to_le_bytes());
        }
        Some(reply)
    }));
    assert!(err.contains("GET_CONFIG"), "{err}");
}

#[test]
fn a_descriptor_where_none_belongs_is_refused() {
    let err = failure(Box::new(|request, payload| {
        let mut reply = good_disk(request, payload)?;
        reply.with_fd = request == GET_CONFIG;
        Some(reply)
    }));
    assert!(err.contains("GET_CONFIG"), "{err}");
}

#[test]
fn features_never_offered_to_the_guest_stay_with_the_back_end() {
    let device = connect(
        Box::new(|request, payload| {
            if request == GET_FEATURES {
                // Packed rings (34), platform access (33), LOG_ALL (26): not for this guest.
                let wild = VERSION_1 | PROTOCOL_FEATURES | 1 << 34 | 1 << 33 | 1 << 26 | 1 << 9;
                return answer(wild.to_le_bytes().to_vec());
            }
            good_disk(request, payload)
        }),
        Duration::from_secs(5),
    )
    .expect("handshake");
    assert_eq!(device.features(), 1 << 9, "only the blk FLUSH bit passes");
}

#[test]
fn a_back_end_without_virtio_1_is_refused_by_name() {
    let err = failure(Box::new(|request, payload| {
        if request == GET_FEATURES {
            return answer(PROTOCOL_FEATURES.to_le_bytes().to_vec());
        }
        good_disk(request, payload)
    }));
    assert!(err.contains("VIRTIO_F_VERSION_1"), "{err}");
}

#[test]
fn too_few_queues_at_the_back_end_is_refused_naming_both_counts() {
    let (stream, _thread) = back_end(Box::new(|request, payload| {
        if request == GET_QUEUE_NUM {
            return answer(1u64.to_le_bytes().to_vec());
        }
        good_disk(request, payload)
    }));
    let options = VhostUserOptions {
        kind: VhostUserKind::Blk { num_queues: 2 },
        ..disk_options()
    };
    let frontend = Frontend::from_stream(stream, 2);
    let Err(err) = VhostUser::with_frontend(
        &options,
        frontend,
        memory(),
        watchdog(),
        Duration::from_secs(5),
    ) else {
        panic!("2 queues on a back end serving 1");
    };
    assert!(err.to_string().contains("2 queues asked"), "{err}");
}

#[test]
fn the_fs_configuration_space_holds_the_tag_and_the_queue_count() {
    let config = fs_config("myfs", 1);
    assert_eq!(&config[..4], b"myfs");
    assert!(config[4..36].iter().all(|&b| b == 0));
    assert_eq!(&config[36..40], &1u32.to_le_bytes());
}

#[test]
fn a_back_end_that_never_answers_is_ended_at_the_deadline() {
    let started = std::time::Instant::now();
    let Err(err) = connect(
        Box::new(|request, payload| {
            if request == GET_FEATURES {
                return None;
            }
            good_disk(request, payload)
        }),
        Duration::from_millis(300),
    ) else {
        panic!("a silent back end was accepted");
    };
    assert!(
        err.to_string()
            .contains("did not answer GET_FEATURES within"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[test]
fn a_reply_shorter_than_its_header_says_is_ended_at_the_deadline() {
    let Err(err) = connect(
        Box::new(|request, payload| {
            let mut reply = good_disk(request, payload)?;
            if request == GET_FEATURES {
                reply.claimed_len = Some(8);
                reply.body.truncate(4);
            }
            Some(reply)
        }),
        Duration::from_millis(300),
    ) else {
        panic!("a short reply was accepted");
    };
    assert!(err.to_string().contains("GET_FEATURES"), "{err}");
}

/// Guest RAM in a shared file mapping, as `mem-share=on` gives it.
fn shared_memory() -> Arc<GuestMemoryMmap> {
    use address_space::vm_memory::mmap::MmapRegionBuilder;
    use address_space::vm_memory::{FileOffset, GuestRegionMmap};
    let path = std::env::temp_dir().join(format!("vhost-user-ram-{}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    file.set_len(0x10_0000).unwrap();
    let region = MmapRegionBuilder::new(0x10_0000)
        .with_file_offset(FileOffset::new(file, 0))
        .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
        .with_mmap_flags(libc::MAP_SHARED)
        .build()
        .unwrap();
    let region = GuestRegionMmap::new(region, GuestAddress(0)).unwrap();
    Arc::new(GuestMemoryMmap::from_regions(vec![region]).unwrap())
}

const GET_INFLIGHT_FD: u32 = 31;
const SET_INFLIGHT_FD: u32 = 32;
const INFLIGHT_SHMFD: u64 = 1 << 12;

/// A disk back end that keeps an inflight region: the requests it saw, in order.
fn inflight_disk(seen: Arc<std::sync::Mutex<Vec<u32>>>) -> Script {
    Box::new(move |request, payload| {
        seen.lock().unwrap().push(request);
        match request {
            GET_PROTOCOL_FEATURES => answer((PROTOCOLS | INFLIGHT_SHMFD).to_le_bytes().to_vec()),
            GET_INFLIGHT_FD => {
                let mut body = payload.to_vec();
                body[0..8].copy_from_slice(&4160u64.to_le_bytes());
                Some(Answer {
                    with_fd: true,
                    ..answer(body)?
                })
            }
            _ => good_disk(request, payload),
        }
    })
}

#[test]
fn the_inflight_region_is_asked_for_and_given_back_before_the_rings() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (stream, _thread) = back_end(inflight_disk(seen.clone()));
    let mem = shared_memory();
    let frontend = Frontend::from_stream(stream, 1);
    let mut device = VhostUser::with_frontend(
        &disk_options(),
        frontend,
        mem.clone(),
        watchdog(),
        Duration::from_secs(5),
    )
    .expect("handshake");
    let mut queue = Queue::new(256).unwrap();
    queue.set_size(8);
    queue.set_desc_table_address(Some(0x1000), Some(0));
    queue.set_avail_ring_address(Some(0x2000), Some(0));
    queue.set_used_ring_address(Some(0x3000), Some(0));
    queue.set_ready(true);
    let irq = Interrupt::new(EventFd::new(0).unwrap());
    device
        .activate(VERSION_1, mem, vec![queue], irq)
        .expect("started");
    // Requests without replies reach the scripted back end after `activate` returns.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !seen.lock().unwrap().contains(&18 /* SET_VRING_ENABLE */) {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            seen.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let seen = seen.lock().unwrap().clone();
    let at = |code| seen.iter().position(|&r| r == code).unwrap();
    assert!(at(GET_INFLIGHT_FD) < at(SET_INFLIGHT_FD), "{seen:?}");
    assert!(at(5 /* SET_MEM_TABLE */) < at(SET_INFLIGHT_FD), "{seen:?}");
    assert!(at(SET_INFLIGHT_FD) < at(8 /* SET_VRING_NUM */), "{seen:?}");
}
