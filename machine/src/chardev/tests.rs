use super::events::{ChardevEvents, Frontend};
use super::*;
use crate::event_loop::EventLoop;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

/// A short socket path of its own under /tmp for each test.
fn sock_path(name: &str) -> PathBuf {
    let path = PathBuf::from(format!("/tmp/nimbus-cd-{}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

fn open(backend: ChardevBackend) -> SharedChardev {
    let config = ChardevConfig {
        id: "c0".into(),
        backend,
    };
    Arc::new(Mutex::new(Chardev::open(&config).expect("open")))
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<(Vec<u8>, usize)>>);

impl Frontend for Recorder {
    fn receive(&mut self, data: &[u8]) {
        self.0.lock().expect("lock").0.extend_from_slice(data);
    }
    fn writable(&mut self) {
        self.0.lock().expect("lock").1 += 1;
    }
}

impl Recorder {
    fn got(&self) -> Vec<u8> {
        self.0.lock().expect("lock").0.clone()
    }
    fn writable_calls(&self) -> usize {
        self.0.lock().expect("lock").1
    }
}

fn on_loop(chardev: &SharedChardev) -> (EventLoop, Recorder) {
    let mut lp = EventLoop::new().expect("loop");
    let rec = Recorder::default();
    lp.add_device(Arc::new(Mutex::new(ChardevEvents::new(
        chardev.clone(),
        Box::new(rec.clone()),
    ))));
    (lp, rec)
}

/// Runs the loop until `done` or 2 s passed.
fn run_until(lp: &mut EventLoop, done: impl Fn() -> bool) {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while !done() && std::time::Instant::now() < end {
        lp.run_for(50).expect("run");
    }
}

fn write(chardev: &SharedChardev, data: &[u8]) -> io::Result<usize> {
    chardev.lock().expect("lock").write_output(data)
}

#[test]
fn server_output_without_a_client_is_dropped_not_kept() {
    let path = sock_path("drop");
    let chardev = open(ChardevBackend::SocketServer(path.clone()));
    assert_eq!(write(&chardev, b"lost").expect("write"), 4);
    assert_eq!(chardev.lock().expect("lock").dropped(), 4);
    assert_eq!(
        chardev.lock().expect("lock").filename(),
        format!("disconnected:unix:{},server=on", path.display())
    );
    let (mut lp, _) = on_loop(&chardev);
    let mut client = UnixStream::connect(&path).expect("connect");
    run_until(&mut lp, || {
        chardev.lock().expect("lock").input_fd().is_some()
    });
    assert_eq!(write(&chardev, b"seen").expect("write"), 4);
    client
        .set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .expect("timeout");
    let mut buf = [0u8; 16];
    let n = client.read(&mut buf).expect("read");
    assert_eq!(&buf[..n], b"seen", "nothing written before the client came");
    let _ = std::fs::remove_file(&path);
}

#[test]
fn server_accepts_a_new_client_after_the_previous_left() {
    let path = sock_path("again");
    let chardev = open(ChardevBackend::SocketServer(path.clone()));
    let (mut lp, rec) = on_loop(&chardev);
    let mut first = UnixStream::connect(&path).expect("connect");
    first.write_all(b"one").expect("send");
    run_until(&mut lp, || rec.got() == b"one");
    assert_eq!(rec.got(), b"one");
    drop(first);
    run_until(&mut lp, || {
        chardev.lock().expect("lock").input_fd().is_none()
    });
    assert!(chardev
        .lock()
        .expect("lock")
        .filename()
        .starts_with("disconnected:"));
    let mut second = UnixStream::connect(&path).expect("connect again");
    second.write_all(b"two").expect("send");
    run_until(&mut lp, || rec.got() == b"onetwo");
    assert_eq!(rec.got(), b"onetwo");
    assert_eq!(write(&chardev, b"back").expect("write"), 4);
    let mut buf = [0u8; 4];
    second.read_exact(&mut buf).expect("read");
    assert_eq!(&buf, b"back");
    let _ = std::fs::remove_file(&path);
}

#[test]
fn a_client_that_does_not_read_makes_writes_would_block_not_block() {
    let path = sock_path("slow");
    let chardev = open(ChardevBackend::SocketServer(path.clone()));
    let (mut lp, rec) = on_loop(&chardev);
    let mut client = UnixStream::connect(&path).expect("connect");
    run_until(&mut lp, || {
        chardev.lock().expect("lock").input_fd().is_some()
    });
    let chunk = [b'x'; 4096];
    let mut sent = 0usize;
    let full = loop {
        match write(&chardev, &chunk) {
            Ok(n) => sent += n,
            Err(e) => break e,
        }
        assert!(sent < 64 << 20, "the socket never filled");
    };
    assert_eq!(full.kind(), ErrorKind::WouldBlock);
    // The UART's writer drops instead and counts it.
    let mut uart = ChardevWriter::dropping(chardev.clone());
    assert_eq!(uart.write(b"drop").expect("write"), 4);
    assert_eq!(chardev.lock().expect("lock").dropped(), 4);
    // virtconsole's writer waits.
    let mut port = ChardevWriter::waiting(chardev.clone());
    assert_eq!(
        port.write(b"wait").expect_err("full").kind(),
        ErrorKind::WouldBlock
    );
    // The reader drains: the front end hears it may write again.
    let before = rec.writable_calls();
    let mut sink = vec![0u8; sent];
    client.read_exact(&mut sink).expect("drain");
    run_until(&mut lp, || rec.writable_calls() > before);
    assert!(rec.writable_calls() > before);
    let _ = std::fs::remove_file(&path);
}

#[test]
fn pty_carries_both_ways_through_its_printed_path() {
    let chardev = open(ChardevBackend::Pty);
    let filename = chardev.lock().expect("lock").filename();
    let path = filename.strip_prefix("pty:").expect("pty: prefix");
    assert!(path.starts_with("/dev/pts/"), "{path}");
    let (mut lp, rec) = on_loop(&chardev);
    let mut slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open slave");
    slave.write_all(b"typed").expect("type");
    run_until(&mut lp, || rec.got() == b"typed");
    assert_eq!(rec.got(), b"typed");
    assert_eq!(write(&chardev, b"out\n").expect("write"), 4);
    let mut buf = [0u8; 4];
    slave.read_exact(&mut buf).expect("read");
    assert_eq!(&buf, b"out\n", "raw mode: no CR added");
}

#[test]
fn client_socket_connects_and_drops_output_once_the_peer_left() {
    let path = sock_path("client");
    let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
    let chardev = open(ChardevBackend::SocketClient(path.clone()));
    let (mut peer, _) = listener.accept().expect("accept");
    let (mut lp, rec) = on_loop(&chardev);
    peer.write_all(b"hi").expect("send");
    run_until(&mut lp, || rec.got() == b"hi");
    assert_eq!(rec.got(), b"hi");
    drop(peer);
    run_until(&mut lp, || {
        chardev.lock().expect("lock").input_fd().is_none()
    });
    assert_eq!(write(&chardev, b"gone").expect("write"), 4);
    assert_eq!(chardev.lock().expect("lock").dropped(), 4);
    let _ = std::fs::remove_file(&path);
}

#[test]
fn missing_socket_is_refused_naming_the_chardev() {
    let config = ChardevConfig {
        id: "c9".into(),
        backend: ChardevBackend::SocketClient("/tmp/nimbus-cd-none/x.sock".into()),
    };
    let err = Chardev::open(&config).err().expect("refused");
    assert!(err.to_string().contains("chardev 'c9'"), "{err}");
}
