//! The QMP monitor's socket side: a listening Unix or TCP socket, at most one client at a time
//! (a second one waits in the backlog, as with QEMU), non-blocking reads and writes on the
//! event loop, descriptors received with SCM_RIGHTS for `getfd`, and a bounded output buffer:
//! a client that does not read its replies is dropped rather than waited on.
//!
//! On the event loop the server is a subscriber: it watches its listener while no client is
//! connected and the client while one is, swapping them from inside its own handler. It reads
//! what the client sends into an inbox; the loop in `running.rs` runs the commands between
//! event batches, since they need the whole machine (and the loop itself, for hot-plug).

use crate::event_loop::{input, input_output, unwatch, watch};
use event_manager::{EventOps, Events, MutEventSubscriber};
use qmp::{Session, VersionInfo};
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// Where the monitor listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QmpEndpoint {
    /// A Unix socket path (replaced if it exists, removed on exit).
    Unix(PathBuf),
    /// A TCP `ip:port`.
    Tcp(String),
}

/// Output a client may leave unread before it is dropped.
pub const MAX_PENDING_OUTPUT: usize = 4 << 20;
const READ_CHUNK: usize = 64 * 1024;

enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

/// One connected client.
pub struct QmpClient {
    stream: Stream,
    /// The protocol state of this connection.
    pub session: Session,
    out: Vec<u8>,
    /// The last descriptor received with SCM_RIGHTS, waiting for a `getfd`.
    pending_fd: Option<File>,
    /// Dropped: it leaves the loop (and is closed) at the next [`QmpServer::sync`].
    closing: bool,
}

/// The socket the server watches on the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Watching {
    Nothing,
    Listener,
    Client(RawFd),
}

/// The server's sources, as their events' data.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Listener,
    Client,
}

/// What a read from the client produced.
pub enum ClientInput {
    /// Bytes; a descriptor sent with them is kept for the next `getfd`.
    Data(Vec<u8>),
    /// Nothing to read right now.
    Nothing,
    /// The client went away.
    Closed,
}

/// The listening monitor and its client.
pub struct QmpServer {
    listener: Listener,
    unix_path: Option<PathBuf>,
    version: VersionInfo,
    client: Option<QmpClient>,
    watching: Watching,
    /// Bytes the client sent that the loop has not run yet.
    inbox: Vec<u8>,
}

impl QmpServer {
    /// Binds `endpoint`; a stale Unix socket file is replaced.
    pub fn bind(endpoint: &QmpEndpoint, version: VersionInfo) -> io::Result<QmpServer> {
        let (listener, unix_path) = match endpoint {
            QmpEndpoint::Unix(path) => {
                remove_stale_socket(path)?;
                let listener = UnixListener::bind(path)?;
                listener.set_nonblocking(true)?;
                (Listener::Unix(listener), Some(path.clone()))
            }
            QmpEndpoint::Tcp(addr) => {
                let listener = TcpListener::bind(addr)?;
                listener.set_nonblocking(true)?;
                (Listener::Tcp(listener), None)
            }
        };
        Ok(QmpServer {
            listener,
            unix_path,
            version,
            client: None,
            watching: Watching::Nothing,
            inbox: Vec::new(),
        })
    }

    /// The listening socket.
    pub fn listener_fd(&self) -> RawFd {
        match &self.listener {
            Listener::Unix(l) => l.as_raw_fd(),
            Listener::Tcp(l) => l.as_raw_fd(),
        }
    }

    /// The client's socket, when one is connected.
    pub fn client_fd(&self) -> Option<RawFd> {
        self.live_client().map(|c| c.stream.as_raw_fd())
    }

    fn live_client(&self) -> Option<&QmpClient> {
        self.client.as_ref().filter(|c| !c.closing)
    }

    /// The connected client.
    pub fn client_mut(&mut self) -> Option<&mut QmpClient> {
        self.client.as_mut().filter(|c| !c.closing)
    }

    /// What the client sent since the last call.
    pub fn take_input(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.inbox)
    }

    /// Brings the loop in step with the server: the listener is watched while no client is
    /// connected, the client (for output room too while output is pending) while one is; a
    /// dropped client leaves the loop before it is closed.
    pub fn sync(&mut self, ops: &mut EventOps) {
        let want = match self.live_client() {
            Some(c) => Watching::Client(c.stream.as_raw_fd()),
            None => Watching::Listener,
        };
        if want != self.watching {
            match self.watching {
                Watching::Listener => unwatch(ops, input(self.listener_fd(), 0), "QMP listener"),
                Watching::Client(fd) => unwatch(ops, input(fd, 0), "QMP client"),
                Watching::Nothing => {}
            }
            if self.client.as_ref().is_some_and(|c| c.closing) {
                self.client = None;
                self.inbox.clear();
            }
            let events = match want {
                Watching::Client(fd) => input(fd, Token::Client as u32),
                _ => input(self.listener_fd(), Token::Listener as u32),
            };
            watch(ops, events, "the QMP socket");
            self.watching = want;
        }
        if let Watching::Client(fd) = self.watching {
            let interest = input_output(fd, Token::Client as u32, self.pending_output() > 0);
            if let Err(e) = ops.modify(interest) {
                log::warn!("cannot update the QMP client's events: {e}");
            }
        }
    }

    /// The client's socket is readable or writable: writes pending output, reads input into
    /// the inbox, and drops a client that left.
    fn serve_client(&mut self) {
        if let Err(err) = self.flush() {
            log::debug!("QMP client write failed: {err}");
            self.disconnect();
            return;
        }
        match self.read() {
            ClientInput::Data(bytes) => self.inbox.extend_from_slice(&bytes),
            ClientInput::Nothing => {}
            ClientInput::Closed => self.disconnect(),
        }
    }

    /// Accepts a waiting client and queues its greeting; `Ok(false)` when none was waiting.
    pub fn accept(&mut self) -> io::Result<bool> {
        let stream = match &self.listener {
            Listener::Unix(l) => l.accept().map(|(s, _)| Stream::Unix(s)),
            Listener::Tcp(l) => l.accept().map(|(s, _)| Stream::Tcp(s)),
        };
        let stream = match stream {
            Ok(stream) => stream,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(err) => return Err(err),
        };
        stream.set_nonblocking(true)?;
        let session = Session::new(self.version.clone());
        let greeting = session.greeting();
        self.client = Some(QmpClient {
            stream,
            session,
            out: Vec::new(),
            pending_fd: None,
            closing: false,
        });
        self.queue(&greeting);
        Ok(true)
    }

    /// Reads what the client sent.
    pub fn read(&mut self) -> ClientInput {
        let Some(client) = self.client_mut() else {
            return ClientInput::Closed;
        };
        let mut buf = vec![0u8; READ_CHUNK];
        let result = match &mut client.stream {
            Stream::Unix(s) => s
                .recv_with_fd(&mut buf)
                .map_err(|e| io::Error::from_raw_os_error(e.errno())),
            Stream::Tcp(s) => s.read(&mut buf).map(|n| (n, None)),
        };
        match result {
            Ok((0, _)) => ClientInput::Closed,
            Ok((n, fd)) => {
                if fd.is_some() {
                    // As in QEMU, a newer descriptor replaces one no `getfd` claimed.
                    client.pending_fd = fd;
                }
                buf.truncate(n);
                ClientInput::Data(buf)
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => ClientInput::Nothing,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => ClientInput::Nothing,
            Err(err) => {
                log::debug!("QMP client read failed: {err}");
                ClientInput::Closed
            }
        }
    }

    /// Queues bytes for the client and writes what the socket takes now. A client whose unread
    /// output passes [`MAX_PENDING_OUTPUT`] is dropped.
    pub fn queue(&mut self, bytes: &[u8]) {
        let Some(client) = self.client_mut() else {
            return;
        };
        client.out.extend_from_slice(bytes);
        if let Err(err) = self.flush() {
            log::debug!("QMP client write failed: {err}");
            self.disconnect();
            return;
        }
        if self.pending_output() > MAX_PENDING_OUTPUT {
            log::warn!("QMP client does not read its replies; dropping it");
            self.disconnect();
        }
    }

    /// Writes as much pending output as the socket takes.
    pub fn flush(&mut self) -> io::Result<()> {
        let Some(client) = self.client_mut() else {
            return Ok(());
        };
        while !client.out.is_empty() {
            let written = match &mut client.stream {
                Stream::Unix(s) => s.write(&client.out),
                Stream::Tcp(s) => s.write(&client.out),
            };
            match written {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    client.out.drain(..n);
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    /// The slot holding the descriptor the client sent last, for `getfd`.
    pub fn pending_fd(&mut self) -> Option<&mut Option<File>> {
        self.client_mut().map(|c| &mut c.pending_fd)
    }

    /// Bytes queued for the client that the socket has not taken yet.
    pub fn pending_output(&self) -> usize {
        self.live_client().map_or(0, |c| c.out.len())
    }

    /// Drops the client; the next one can connect. A client on the loop is closed once
    /// [`QmpServer::sync`] took it off.
    pub fn disconnect(&mut self) {
        match (&mut self.client, self.watching) {
            (Some(client), Watching::Client(_)) => client.closing = true,
            _ => self.client = None,
        }
    }

    /// Sends an event to the client once it has negotiated capabilities.
    pub fn send_event(&mut self, event: &qmp::Event) {
        let negotiated = self
            .live_client()
            .is_some_and(|c| c.session.is_negotiated());
        if negotiated {
            let bytes = Session::event(event, std::time::SystemTime::now().into());
            self.queue(&bytes);
        }
    }

    /// Writes pending output with the socket made blocking, for the last words before exit.
    pub fn flush_blocking(&mut self) {
        if let Some(client) = self.client_mut() {
            let _ = client.stream.set_nonblocking(false);
        }
        if let Err(err) = self.flush() {
            log::debug!("QMP client: cannot write the last replies: {err}");
        }
    }
}

impl MutEventSubscriber for QmpServer {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.data() == Token::Listener as u32 {
            match self.accept() {
                // One client at a time: the next one waits in the backlog until this one leaves.
                Ok(_) => {}
                Err(err) => log::warn!("cannot accept a QMP client: {err}"),
            }
        } else {
            self.serve_client();
        }
        self.sync(ops);
    }

    fn init(&mut self, ops: &mut EventOps) {
        self.watching = Watching::Nothing;
        self.sync(ops);
    }
}

impl Drop for QmpServer {
    fn drop(&mut self) {
        if let Some(path) = &self.unix_path {
            if let Err(err) = std::fs::remove_file(path) {
                log::debug!("cannot remove QMP socket {path:?}: {err}");
            }
        }
    }
}

impl Stream {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Stream::Unix(s) => s.as_raw_fd(),
            Stream::Tcp(s) => s.as_raw_fd(),
        }
    }

    fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_nonblocking(on),
            Stream::Tcp(s) => s.set_nonblocking(on),
        }
    }
}

/// Removes `path` if it is a socket left by an earlier run; anything else there is an error.
fn remove_stale_socket(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "a file that is not a socket is in the way",
        )),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("nimbus-qmp-{}-{name}", std::process::id()))
    }

    #[test]
    fn stale_socket_is_replaced_and_removed_on_drop() {
        let path = temp_path("stale.sock");
        drop(UnixListener::bind(&path));
        assert!(path.exists());
        let server = QmpServer::bind(&QmpEndpoint::Unix(path.clone()), VersionInfo::nimbus("0"))
            .expect("bind");
        drop(server);
        assert!(!path.exists());
    }

    #[test]
    fn regular_file_in_the_way_is_not_removed() {
        let path = temp_path("regular");
        std::fs::write(&path, b"keep").expect("write");
        assert!(
            QmpServer::bind(&QmpEndpoint::Unix(path.clone()), VersionInfo::nimbus("0")).is_err()
        );
        assert_eq!(std::fs::read(&path).expect("still there"), b"keep");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn client_gets_the_greeting_on_accept() {
        let path = temp_path("greet.sock");
        let mut server =
            QmpServer::bind(&QmpEndpoint::Unix(path.clone()), VersionInfo::nimbus("0"))
                .expect("bind");
        let mut client = UnixStream::connect(&path).expect("connect");
        assert!(server.accept().expect("accept"));
        let mut buf = [0u8; 256];
        let n = client.read(&mut buf).expect("read");
        assert!(buf[..n].starts_with(b"{\"QMP\":{\"version\":{\"qemu\":"));
        assert!(buf[..n].ends_with(b"\r\n"));
    }

    #[test]
    fn client_that_never_reads_is_dropped() {
        let path = temp_path("flood.sock");
        let mut server =
            QmpServer::bind(&QmpEndpoint::Unix(path.clone()), VersionInfo::nimbus("0"))
                .expect("bind");
        let _client = UnixStream::connect(&path).expect("connect");
        assert!(server.accept().expect("accept"));
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..(MAX_PENDING_OUTPUT / chunk.len() + 64) {
            server.queue(&chunk);
            if server.client_fd().is_none() {
                break;
            }
        }
        assert!(server.client_fd().is_none(), "the slow client is dropped");
    }
}
