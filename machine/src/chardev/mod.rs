//! Character device back ends (`-chardev`): where a console's bytes go and come from.
//!
//! A [`Chardev`] is stdio, a file, a pseudo-terminal or a Unix socket (listening, or connected
//! to a listener). Front ends (the 16550 and virtconsole) write through a [`ChardevWriter`] and
//! receive input from the chardev's subscriber on the event loop ([`events`]), which also
//! accepts socket clients. Every descriptor but stdio's is non-blocking, so a chardev nobody
//! reads never blocks a thread: a full pty or socket answers `WouldBlock`, which the UART
//! turns into a dropped byte (QEMU drops what its UART cannot send) and virtconsole into a
//! stalled transmit queue (only that port waits). Output while nobody is connected (a socket
//! server without client, a pty whose other end is closed) is dropped, never buffered.

pub mod events;
mod pty;

use std::fs::File;
use std::io::{self, ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// What `-chardev` (or `-serial pty`) asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChardevBackend {
    /// Output to stdout, input from stdin.
    Stdio,
    /// A new pseudo-terminal; its path is printed on stderr.
    Pty,
    /// Output appended to a file; no input.
    File(PathBuf),
    /// A Unix socket Nimbus listens on, serving one client at a time (`server,nowait`).
    SocketServer(PathBuf),
    /// A Unix socket Nimbus connects to at start.
    SocketClient(PathBuf),
}

/// One chardev: its id (`label` in QMP) and back end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChardevConfig {
    /// `id=`.
    pub id: String,
    /// The back end.
    pub backend: ChardevBackend,
}

/// Why a chardev could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ChardevError {
    /// The output file cannot be opened.
    #[error("chardev '{id}': cannot open file {path:?}")]
    File {
        /// The chardev id.
        id: String,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// No pseudo-terminal could be allocated.
    #[error("chardev '{id}': cannot allocate a pseudo-terminal")]
    Pty {
        /// The chardev id.
        id: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The socket cannot be bound, listened on or connected to.
    #[error("chardev '{id}': cannot use socket {path:?}")]
    Socket {
        /// The chardev id.
        id: String,
        /// The socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// A chardev shared by its front end (writing) and its event-loop subscriber (reading).
pub type SharedChardev = Arc<Mutex<Chardev>>;

enum Link {
    Stdio,
    File(File),
    Pty {
        master: File,
        path: PathBuf,
    },
    Server {
        listener: UnixListener,
        path: PathBuf,
        client: Option<UnixStream>,
    },
    Client {
        path: PathBuf,
        stream: Option<UnixStream>,
    },
}

/// What reading a chardev's input gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// `n` bytes.
    Data(usize),
    /// Nothing now.
    Empty,
    /// The peer left (a socket client closed its end).
    Closed,
}

/// An open chardev.
pub struct Chardev {
    id: String,
    link: Link,
    frontend: bool,
    dropped: u64,
}

impl Chardev {
    /// Opens `config`'s back end: creates the file, allocates and announces the pty (on stderr,
    /// as QEMU does), binds the socket or connects to it.
    pub fn open(config: &ChardevConfig) -> Result<Chardev, ChardevError> {
        let id = config.id.clone();
        let link = match &config.backend {
            ChardevBackend::Stdio => Link::Stdio,
            ChardevBackend::File(path) => Link::File(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| ChardevError::File {
                        id: id.clone(),
                        path: path.clone(),
                        source,
                    })?,
            ),
            ChardevBackend::Pty => {
                let (master, path) = pty::open().map_err(|source| ChardevError::Pty {
                    id: id.clone(),
                    source,
                })?;
                eprintln!("char device redirected to {} (label {id})", path.display());
                Link::Pty { master, path }
            }
            ChardevBackend::SocketServer(path) => {
                let socket_err = |source| ChardevError::Socket {
                    id: id.clone(),
                    path: path.clone(),
                    source,
                };
                // A socket file left by an earlier run would make bind fail.
                if std::fs::symlink_metadata(path)
                    .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
                {
                    let _ = std::fs::remove_file(path);
                }
                let listener = UnixListener::bind(path).map_err(socket_err)?;
                listener.set_nonblocking(true).map_err(socket_err)?;
                Link::Server {
                    listener,
                    path: path.clone(),
                    client: None,
                }
            }
            ChardevBackend::SocketClient(path) => {
                let socket_err = |source| ChardevError::Socket {
                    id: id.clone(),
                    path: path.clone(),
                    source,
                };
                let stream = UnixStream::connect(path).map_err(socket_err)?;
                stream.set_nonblocking(true).map_err(socket_err)?;
                Link::Client {
                    path: path.clone(),
                    stream: Some(stream),
                }
            }
        };
        Ok(Chardev {
            id,
            link,
            frontend: false,
            dropped: 0,
        })
    }

    /// The chardev id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Records that a front end (the UART, a console port) uses the chardev.
    pub fn attach_frontend(&mut self) {
        self.frontend = true;
    }

    /// Whether a front end uses it (`frontend-open` in QMP).
    pub fn frontend_open(&self) -> bool {
        self.frontend
    }

    /// Output bytes dropped because nobody was connected (or the UART could not wait).
    #[cfg(test)]
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Counts `n` output bytes dropped by a front end.
    pub fn count_dropped(&mut self, n: usize) {
        self.dropped += n as u64;
    }

    /// QEMU's `filename` of `query-chardev`: `stdio`, `file`, `pty:/dev/pts/N`,
    /// `unix:<path>,server=on` (prefixed `disconnected:` while no client is connected), or
    /// `unix:<path>`.
    pub fn filename(&self) -> String {
        match &self.link {
            Link::Stdio => "stdio".to_string(),
            Link::File(_) => "file".to_string(),
            Link::Pty { path, .. } => format!("pty:{}", path.display()),
            Link::Server { path, client, .. } => format!(
                "{}unix:{},server=on",
                if client.is_some() {
                    ""
                } else {
                    "disconnected:"
                },
                path.display()
            ),
            Link::Client { path, stream } => format!(
                "{}unix:{}",
                if stream.is_some() {
                    ""
                } else {
                    "disconnected:"
                },
                path.display()
            ),
        }
    }

    /// Writes guest output. `Ok(n)`: `n` bytes were taken (sent, or dropped because nobody is
    /// connected); `Err(WouldBlock)`: the reader is slow and nothing was taken.
    pub fn write_output(&mut self, data: &[u8]) -> io::Result<usize> {
        let result = match &mut self.link {
            Link::Stdio => {
                let mut out = io::stdout().lock();
                out.write_all(data)
                    .and_then(|()| out.flush())
                    .map(|()| data.len())
            }
            Link::File(file) => file.write_all(data).map(|()| data.len()),
            Link::Pty { master, .. } => master.write(data),
            Link::Server { client, .. } => match client {
                Some(stream) => stream.write(data),
                None => Err(ErrorKind::NotConnected.into()),
            },
            Link::Client { stream, .. } => match stream {
                Some(stream) => stream.write(data),
                None => Err(ErrorKind::NotConnected.into()),
            },
        };
        match result {
            Err(e) if e.kind() == ErrorKind::WouldBlock => Err(e),
            Err(e) if e.kind() == ErrorKind::Interrupted => Err(ErrorKind::WouldBlock.into()),
            Ok(n) => Ok(n),
            // Nobody connected (no client, a peer that left, a pty with no reader, EIO):
            // dropped, as QEMU drops output of a disconnected chardev.
            Err(_) => {
                self.dropped += data.len() as u64;
                Ok(data.len())
            }
        }
    }

    /// The listening socket, while it waits for a client.
    pub fn listener_fd(&self) -> Option<RawFd> {
        match &self.link {
            Link::Server {
                listener,
                client: None,
                ..
            } => Some(listener.as_raw_fd()),
            _ => None,
        }
    }

    /// The descriptor input comes from (stdio's is stdin), if one is connected.
    pub fn input_fd(&self) -> Option<RawFd> {
        match &self.link {
            Link::Stdio => Some(libc::STDIN_FILENO),
            Link::File(_) => None,
            Link::Pty { master, .. } => Some(master.as_raw_fd()),
            Link::Server { client, .. } => client.as_ref().map(AsRawFd::as_raw_fd),
            Link::Client { stream, .. } => stream.as_ref().map(AsRawFd::as_raw_fd),
        }
    }

    /// Whether input is stdin (watched level-triggered; the others edge-triggered).
    pub fn is_stdio(&self) -> bool {
        matches!(self.link, Link::Stdio)
    }

    /// Accepts a waiting client of a listening socket that has none; returns its descriptor.
    pub fn accept(&mut self) -> Option<RawFd> {
        let Link::Server {
            listener, client, ..
        } = &mut self.link
        else {
            return None;
        };
        if client.is_some() {
            return None;
        }
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(e) = stream.set_nonblocking(true) {
                    log::warn!("chardev '{}': client refused: {e}", self.id);
                    return None;
                }
                log::info!("chardev '{}': client connected", self.id);
                let fd = stream.as_raw_fd();
                *client = Some(stream);
                Some(fd)
            }
            Err(e) => {
                if e.kind() != ErrorKind::WouldBlock {
                    log::warn!("chardev '{}': accept failed: {e}", self.id);
                }
                None
            }
        }
    }

    /// Reads input into `buf`.
    pub fn read_input(&mut self, buf: &mut [u8]) -> Input {
        let result = match &mut self.link {
            Link::Stdio => io::stdin().lock().read(buf),
            Link::File(_) => return Input::Empty,
            Link::Pty { master, .. } => master.read(buf),
            Link::Server { client, .. } => match client {
                Some(stream) => stream.read(buf),
                None => return Input::Empty,
            },
            Link::Client { stream, .. } => match stream {
                Some(stream) => stream.read(buf),
                None => return Input::Empty,
            },
        };
        match result {
            Ok(0) => Input::Closed,
            Ok(n) => Input::Data(n),
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                Input::Empty
            }
            // A pty whose other end is closed reads EIO: nobody is there, not an end.
            Err(_) if matches!(self.link, Link::Pty { .. }) => Input::Empty,
            Err(_) => Input::Closed,
        }
    }

    /// Lets go of a socket peer that left: a server waits for the next client; a client
    /// drops output from now on. The stream is returned so the caller stops watching it
    /// before it is closed.
    pub fn disconnect(&mut self) -> Option<UnixStream> {
        let gone = match &mut self.link {
            Link::Server { client, .. } => client.take(),
            Link::Client { stream, .. } => stream.take(),
            _ => None,
        };
        if gone.is_some() {
            log::info!("chardev '{}': peer disconnected", self.id);
        }
        gone
    }
}

/// A front end's output handle.
pub struct ChardevWriter {
    chardev: SharedChardev,
    drop_when_full: bool,
}

impl ChardevWriter {
    /// For the UART: what a slow reader cannot take now is dropped, as QEMU's 16550 does
    /// once its transmit retries are spent (the UART has no way to wait on the event loop).
    pub fn dropping(chardev: SharedChardev) -> ChardevWriter {
        ChardevWriter {
            chardev,
            drop_when_full: true,
        }
    }

    /// For virtconsole: a slow reader answers `WouldBlock`, and the port waits.
    pub fn waiting(chardev: SharedChardev) -> ChardevWriter {
        ChardevWriter {
            chardev,
            drop_when_full: false,
        }
    }
}

impl Write for ChardevWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut chardev = address_space::sync::lock(&self.chardev);
        match chardev.write_output(data) {
            Err(e) if e.kind() == ErrorKind::WouldBlock && self.drop_when_full => {
                chardev.count_dropped(data.len());
                Ok(data.len())
            }
            other => other,
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests;
