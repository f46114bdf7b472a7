//! The QMP control protocol: wire format, command and event schema, and a sans-IO session.
//!
//! Owns only protocol logic (bytes in, replies and events out); the server socket lives in the
//! machine's event loop and the commands are carried out by a handler the machine implements.
#![forbid(unsafe_code)]
