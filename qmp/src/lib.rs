//! The QMP control protocol: wire format, command and event schema, and a sans-IO session.
//!
//! Owns only protocol logic (bytes in, replies and events out); the server socket lives in the
//! machine's event loop and the commands are carried out by a handler the machine implements.
//! It must not know about KVM, devices or sockets.
//!
//! - [`Session`] is one client connection: it produces the greeting, splits the byte stream
//!   into JSON values exactly as QEMU's JSON streamer does (values split across reads, several
//!   per read, garbage followed by resynchronisation, bounded buffering), enforces capabilities
//!   negotiation, validates requests and arguments with QEMU's error texts, and serialises
//!   replies and events.
//! - [`Command`] is a parsed request with typed arguments from [`schema`].
//! - [`QmpHandler`] is what the machine implements; [`Session::serve`] drives it.
//!
//! ```
//! use qmp::{Incoming, Session, VersionInfo};
//!
//! let mut session = Session::new(VersionInfo::nimbus("0.1.0"));
//! let _greeting = session.greeting();
//! let out = session.feed(b"{\"execute\":\"qmp_capabilities\"}\r\n");
//! assert_eq!(out, [Incoming::Reply(b"{\"return\":{}}\r\n".to_vec())]);
//! ```
#![forbid(unsafe_code)]

mod command;
mod error;
mod handler;
mod json;
pub mod schema;
mod session;
mod visit;

pub use command::{query_commands, query_events, Command, COMMAND_NAMES};
pub use error::{ErrorClass, QmpError};
pub use handler::{AfterReply, QmpHandler, Response, Served};
pub use schema::{Event, Timestamp, VersionInfo};
pub use session::{Incoming, Request, Session, DEFAULT_INPUT_LIMIT};
