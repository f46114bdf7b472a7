//! One client connection's protocol state: greeting, capabilities negotiation, request
//! validation, and the serialisation of replies and events. Sans-IO: bytes in, bytes out.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::command::Command;
use crate::error::{ErrorClass, QmpError};
use crate::json::{JsonStream, Piece};
use crate::schema::{Event, QmpCapabilitiesArgs, QmpCapability, Timestamp, VersionInfo};
use crate::visit::Args;

/// Default bound on buffered partial input: 1 MiB.
pub const DEFAULT_INPUT_LIMIT: usize = 1 << 20;

/// A command ready for the machine to execute; its reply must echo `id`.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The client's `id`, any JSON value, echoed in the reply.
    pub id: Option<Value>,
    /// The parsed command.
    pub command: Command,
}

/// What the session made of the input, in input order.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// A command for the machine; answer it with [`Session::reply`].
    Request(Request),
    /// A reply the session produced itself (negotiation, parse and argument errors): send it.
    Reply(Vec<u8>),
    /// The client sent more than the input limit without completing a value. The bytes are
    /// QEMU's error reply; send it if the socket can take it, then drop the client.
    Overflow(Vec<u8>),
}

/// The state machine of one QMP connection.
#[derive(Debug)]
pub struct Session {
    version: VersionInfo,
    negotiated: bool,
    stream: JsonStream,
}

#[derive(Serialize)]
struct Greeting<'a> {
    #[serde(rename = "QMP")]
    qmp: GreetingBody<'a>,
}

#[derive(Serialize)]
struct GreetingBody<'a> {
    version: &'a VersionInfo,
    capabilities: [QmpCapability; 0],
}

#[derive(Serialize)]
struct ReturnReply<'a> {
    #[serde(rename = "return")]
    value: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a Value>,
}

#[derive(Serialize)]
struct ErrorReply<'a> {
    error: &'a QmpError,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a Value>,
}

#[derive(Serialize)]
struct EventMessage<'a> {
    timestamp: Timestamp,
    #[serde(flatten)]
    event: &'a Event,
}

impl Session {
    /// A new connection in capabilities-negotiation mode, with the default input limit.
    pub fn new(version: VersionInfo) -> Session {
        Session::with_input_limit(version, DEFAULT_INPUT_LIMIT)
    }

    /// A new connection that buffers at most `limit` bytes of an incomplete value.
    pub fn with_input_limit(version: VersionInfo, limit: usize) -> Session {
        Session {
            version,
            negotiated: false,
            stream: JsonStream::new(limit),
        }
    }

    /// The version announced in the greeting.
    pub fn version(&self) -> &VersionInfo {
        &self.version
    }

    /// Whether `qmp_capabilities` has been accepted.
    pub fn is_negotiated(&self) -> bool {
        self.negotiated
    }

    /// Bytes held for an incomplete value.
    pub fn buffered(&self) -> usize {
        self.stream.buffered()
    }

    /// The greeting to send on connect.
    pub fn greeting(&self) -> Vec<u8> {
        let body = GreetingBody {
            version: &self.version,
            capabilities: [],
        };
        line(&Greeting { qmp: body })
    }

    /// Feed bytes read from the client; returns what they contained, in order.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Incoming> {
        let mut pieces = Vec::new();
        self.stream.feed(bytes, &mut pieces);
        pieces
            .into_iter()
            .map(|piece| self.incoming(piece))
            .collect()
    }

    /// A reply: `{"return": ..., "id": ...}` or `{"error": ..., "id": ...}`, then `\r\n`.
    pub fn reply(id: Option<Value>, result: Result<Value, QmpError>) -> Vec<u8> {
        match &result {
            Ok(value) => line(&ReturnReply {
                value,
                id: id.as_ref(),
            }),
            Err(error) => line(&ErrorReply {
                error,
                id: id.as_ref(),
            }),
        }
    }

    /// An event: `{"timestamp": ..., "event": ..., "data": ...}`, then `\r\n`.
    pub fn event(event: &Event, timestamp: Timestamp) -> Vec<u8> {
        line(&EventMessage { timestamp, event })
    }

    fn incoming(&mut self, piece: Piece) -> Incoming {
        match piece {
            Piece::Value(value) => self.request(value),
            Piece::Error(desc) => {
                Incoming::Reply(Session::reply(None, Err(QmpError::generic(desc))))
            }
            Piece::Overflow(desc) => {
                Incoming::Overflow(Session::reply(None, Err(QmpError::generic(desc))))
            }
        }
    }

    fn request(&mut self, value: Value) -> Incoming {
        let Value::Object(mut map) = value else {
            let error = QmpError::generic("QMP input must be a JSON object");
            return Incoming::Reply(Session::reply(None, Err(error)));
        };
        let id = map.remove("id");
        match self.dispatch(map) {
            Ok(Some(command)) => Incoming::Request(Request { id, command }),
            Ok(None) => Incoming::Reply(Session::reply(id, Ok(Value::Object(Map::new())))),
            Err(error) => Incoming::Reply(Session::reply(id, Err(error))),
        }
    }

    /// The command to run, or `None` when the session answered it (`qmp_capabilities`).
    fn dispatch(&mut self, request: Map<String, Value>) -> Result<Option<Command>, QmpError> {
        let (name, arguments) = check_request(request)?;
        if name == "qmp_capabilities" {
            return self.capabilities(arguments).map(|()| None);
        }
        if !self.negotiated {
            return Err(QmpError::new(
                ErrorClass::CommandNotFound,
                "Expecting capabilities negotiation with 'qmp_capabilities'",
            ));
        }
        Command::parse(&name, arguments).map(Some)
    }

    fn capabilities(&mut self, arguments: Map<String, Value>) -> Result<(), QmpError> {
        let mut args = Args::new(arguments);
        let caps = QmpCapabilitiesArgs::read(&mut args)?;
        args.finish()?;
        if self.negotiated {
            return Err(QmpError::new(
                ErrorClass::CommandNotFound,
                "Capabilities negotiation is already complete, command ignored",
            ));
        }
        if caps
            .enable
            .is_some_and(|enable| enable.contains(&QmpCapability::Oob))
        {
            return Err(QmpError::generic("Capability 'oob' not available"));
        }
        self.negotiated = true;
        Ok(())
    }
}

/// QEMU's `qmp_dispatch_check_obj` (with out-of-band execution not offered): the command
/// name and its arguments, or the first malformed member.
fn check_request(request: Map<String, Value>) -> Result<(String, Map<String, Value>), QmpError> {
    let mut name = None;
    let mut arguments = Map::new();
    for (key, value) in request {
        match (key.as_str(), value) {
            ("execute", Value::String(command)) => name = Some(command),
            ("execute", _) => {
                return Err(QmpError::generic(
                    "QMP input member 'execute' must be a string",
                ))
            }
            ("arguments", Value::Object(args)) => arguments = args,
            ("arguments", _) => {
                return Err(QmpError::generic(
                    "QMP input member 'arguments' must be an object",
                ))
            }
            _ => {
                return Err(QmpError::generic(format!(
                    "QMP input member '{key}' is unexpected"
                )))
            }
        }
    }
    let name = name.ok_or_else(|| QmpError::generic("QMP input lacks member 'execute'"))?;
    Ok((name, arguments))
}

/// One message: compact JSON and `\r\n`.
fn line<T: Serialize>(message: &T) -> Vec<u8> {
    let mut out = serde_json::to_vec(message)
        .expect("QMP messages have string keys only, so serialisation cannot fail");
    out.extend_from_slice(b"\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{DeviceDeletedInfo, ShutdownCause, ShutdownInfo};
    use serde_json::json;

    const CAPS: &[u8] = b"{\"execute\":\"qmp_capabilities\"}\r\n";

    fn session() -> Session {
        Session::new(VersionInfo::nimbus("0.1.0"))
    }

    fn negotiated() -> Session {
        let mut s = session();
        assert_eq!(
            s.feed(CAPS),
            [Incoming::Reply(b"{\"return\":{}}\r\n".to_vec())]
        );
        s
    }

    fn reply_json(incoming: &Incoming) -> Value {
        match incoming {
            Incoming::Reply(bytes) | Incoming::Overflow(bytes) => {
                assert!(bytes.ends_with(b"\r\n"), "reply must end with CRLF");
                serde_json::from_slice(bytes).expect("reply is JSON")
            }
            Incoming::Request(r) => panic!("expected a reply, got request {r:?}"),
        }
    }

    fn error_of(incoming: &Incoming) -> (String, String) {
        let reply = reply_json(incoming);
        let class = reply["error"]["class"].as_str().expect("class").to_owned();
        let desc = reply["error"]["desc"].as_str().expect("desc").to_owned();
        (class, desc)
    }

    fn request(incoming: &Incoming) -> &Request {
        match incoming {
            Incoming::Request(r) => r,
            other => panic!("expected a request, got {other:?}"),
        }
    }

    #[test]
    fn greeting_is_exact_bytes_with_qemu_version() {
        assert_eq!(
            session().greeting(),
            b"{\"QMP\":{\"version\":{\"qemu\":{\"micro\":1,\"minor\":0,\"major\":5},\
              \"package\":\"Nimbus-0.1.0\"},\"capabilities\":[]}}\r\n"
                .to_vec()
        );
    }

    #[test]
    fn command_before_negotiation_is_refused_with_command_not_found() {
        let mut s = session();
        let out = s.feed(b"{\"execute\":\"query-status\",\"id\":1}");
        assert_eq!(
            reply_json(&out[0]),
            json!({"error": {"class": "CommandNotFound",
                   "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"},
                   "id": 1})
        );
        assert!(!s.is_negotiated());
    }

    #[test]
    fn unknown_command_before_negotiation_gets_the_negotiation_text() {
        let out = session().feed(b"{\"execute\":\"foo\"}");
        assert_eq!(
            error_of(&out[0]),
            (
                "CommandNotFound".to_owned(),
                "Expecting capabilities negotiation with 'qmp_capabilities'".to_owned()
            )
        );
    }

    #[test]
    fn negotiation_unlocks_commands() {
        let mut s = negotiated();
        let out = s.feed(b"{\"execute\":\"query-status\"}");
        assert_eq!(
            request(&out[0]),
            &Request {
                id: None,
                command: Command::QueryStatus
            }
        );
    }

    #[test]
    fn second_negotiation_is_refused_but_session_stays_usable() {
        let mut s = negotiated();
        let out = s.feed(CAPS);
        assert_eq!(
            error_of(&out[0]),
            (
                "CommandNotFound".to_owned(),
                "Capabilities negotiation is already complete, command ignored".to_owned()
            )
        );
        assert!(s.is_negotiated());
    }

    #[test]
    fn enabling_oob_is_refused_and_negotiation_not_completed() {
        let mut s = session();
        let out =
            s.feed(b"{\"execute\":\"qmp_capabilities\",\"arguments\":{\"enable\":[\"oob\"]}}");
        assert_eq!(error_of(&out[0]).1, "Capability 'oob' not available");
        assert!(!s.is_negotiated());
    }

    #[test]
    fn number_string_and_object_ids_are_echoed_exactly() {
        let mut s = negotiated();
        let ids = [
            json!(7),
            json!("abc"),
            json!({"tag": [1, "x", null]}),
            json!(-1.5),
        ];
        for id in ids {
            let msg = json!({"execute": "stop", "id": id}).to_string();
            let out = s.feed(msg.as_bytes());
            let req = request(&out[0]);
            assert_eq!(req.id.as_ref(), Some(&id));
            let reply = Session::reply(req.id.clone(), Ok(json!({})));
            let reply: Value = serde_json::from_slice(&reply).expect("JSON");
            assert_eq!(reply, json!({"return": {}, "id": id}));
        }
    }

    #[test]
    fn id_is_echoed_on_session_errors_too() {
        let mut s = negotiated();
        let out = s.feed(b"{\"execute\":\"nope\",\"id\":\"q1\"}");
        assert_eq!(
            reply_json(&out[0]),
            json!({"error": {"class": "CommandNotFound",
                   "desc": "The command nope has not been found"}, "id": "q1"})
        );
    }

    #[test]
    fn deeply_nested_id_is_echoed_in_full() {
        let mut s = negotiated();
        let depth = 1000;
        let id = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let msg = format!("{{\"execute\":\"nope\",\"id\":{id}}}");
        let out = s.feed(msg.as_bytes());
        let Incoming::Reply(bytes) = &out[0] else {
            panic!("reply expected")
        };
        let text = String::from_utf8(bytes.clone()).expect("UTF-8");
        assert!(text.ends_with(&format!(",\"id\":{id}}}\r\n")));
    }

    #[test]
    fn reply_without_id_has_no_id_member() {
        assert_eq!(
            Session::reply(None, Ok(json!({}))),
            b"{\"return\":{}}\r\n".to_vec()
        );
    }

    #[test]
    fn message_split_across_three_feeds_is_one_request() {
        let mut s = negotiated();
        assert!(s.feed(b"{\"exec").is_empty());
        assert!(s.feed(b"ute\":\"cont\",\"i").is_empty());
        let out = s.feed(b"d\":5}\n");
        assert_eq!(
            out,
            [Incoming::Request(Request {
                id: Some(json!(5)),
                command: Command::Cont
            })]
        );
    }

    #[test]
    fn three_commands_in_one_feed_come_out_in_order() {
        let mut s = negotiated();
        let out = s.feed(
            b"{\"execute\":\"stop\"}{\"execute\":\"cont\"}\r\n  {\"execute\":\"query-kvm\"}\n",
        );
        let commands: Vec<&Command> = out.iter().map(|i| &request(i).command).collect();
        assert_eq!(
            commands,
            [&Command::Stop, &Command::Cont, &Command::QueryKvm]
        );
    }

    #[test]
    fn garbage_then_valid_command_gives_one_error_then_the_request() {
        let mut s = negotiated();
        let out = s.feed(b"@#$%garbage\n{\"execute\":\"stop\"}");
        assert_eq!(out.len(), 2);
        assert_eq!(
            error_of(&out[0]),
            (
                "GenericError".to_owned(),
                "JSON parse error, stray '@'".to_owned()
            )
        );
        assert_eq!(request(&out[1]).command, Command::Stop);
    }

    #[test]
    fn invalid_keyword_is_a_json_parse_error() {
        let mut s = negotiated();
        let out = s.feed(b"{\"execute\": stop}");
        assert_eq!(
            error_of(&out[0]).1,
            "JSON parse error, invalid keyword 'stop'"
        );
    }

    #[test]
    fn array_or_number_is_not_a_json_object() {
        let mut s = negotiated();
        let out = s.feed(b"[1, 2] 42\n");
        assert_eq!(out.len(), 2);
        for incoming in &out {
            assert_eq!(
                reply_json(incoming),
                json!({"error": {"class": "GenericError",
                       "desc": "QMP input must be a JSON object"}})
            );
        }
    }

    #[test]
    fn object_without_execute_lacks_member_execute() {
        let out = negotiated().feed(b"{\"id\":3}");
        assert_eq!(
            reply_json(&out[0]),
            json!({"error": {"class": "GenericError",
                   "desc": "QMP input lacks member 'execute'"}, "id": 3})
        );
    }

    #[test]
    fn malformed_request_members_use_qemu_texts() {
        let mut s = negotiated();
        let cases: [(&[u8], &str); 4] = [
            (
                b"{\"execute\":1}",
                "QMP input member 'execute' must be a string",
            ),
            (
                b"{\"execute\":\"stop\",\"arguments\":[]}",
                "QMP input member 'arguments' must be an object",
            ),
            (
                b"{\"execute\":\"stop\",\"extra\":1}",
                "QMP input member 'extra' is unexpected",
            ),
            (
                b"{\"exec-oob\":\"stop\"}",
                "QMP input member 'exec-oob' is unexpected",
            ),
        ];
        for (input, desc) in cases {
            let out = s.feed(input);
            assert_eq!(
                error_of(&out[0]),
                ("GenericError".to_owned(), desc.to_owned())
            );
        }
    }

    #[test]
    fn unknown_command_is_command_not_found() {
        let out = negotiated().feed(b"{\"execute\":\"foo\"}");
        assert_eq!(
            error_of(&out[0]),
            (
                "CommandNotFound".to_owned(),
                "The command foo has not been found".to_owned()
            )
        );
    }

    #[test]
    fn missing_argument_is_named() {
        let out = negotiated().feed(b"{\"execute\":\"device_del\",\"arguments\":{}}");
        assert_eq!(
            error_of(&out[0]),
            (
                "GenericError".to_owned(),
                "Parameter 'id' is missing".to_owned()
            )
        );
    }

    #[test]
    fn wrong_argument_type_is_named_with_expected_type() {
        let out = negotiated().feed(b"{\"execute\":\"getfd\",\"arguments\":{\"fdname\":3}}");
        assert_eq!(
            error_of(&out[0]),
            (
                "GenericError".to_owned(),
                "Invalid parameter type for 'fdname', expected: string".to_owned()
            )
        );
    }

    #[test]
    fn device_add_with_extra_qemu_keys_is_accepted() {
        let mut s = negotiated();
        let out = s.feed(
            br#"{"execute":"device_add","arguments":{"driver":"virtio-blk-mmio","id":"vdb",
                "drive":"drive-1","addr":"0x1","romfile":"","bus":"virtio-mmio-bus.0",
                "share-rw":"on"},"id":"hp"}"#,
        );
        let Command::DeviceAdd(device) = &request(&out[0]).command else {
            panic!("device_add expected");
        };
        assert_eq!(device.drive.as_deref(), Some("drive-1"));
        assert_eq!(device.extra.get("share-rw"), Some(&json!("on")));
    }

    #[test]
    fn oversized_input_is_reported_and_buffer_stays_bounded() {
        let mut s = Session::with_input_limit(VersionInfo::nimbus("0.1.0"), 1024);
        let mut out = s.feed(b"{\"execute\":\"qmp_capabilities\",\"arguments\":{\"x\":\"");
        out.extend(s.feed(&[b'a'; 4096]));
        assert!(matches!(out.last(), Some(Incoming::Overflow(_))));
        assert_eq!(error_of(&out[0]).1, "JSON token size limit exceeded");
        assert!(s.buffered() <= 1024);
    }

    #[test]
    fn default_limit_overflows_past_one_mebibyte() {
        let mut s = negotiated();
        let mut input = b"[".to_vec();
        input.extend(b"1,".repeat(600_000));
        let out = s.feed(&input);
        assert!(out.iter().any(|i| matches!(i, Incoming::Overflow(_))));
        assert!(s.buffered() <= DEFAULT_INPUT_LIMIT);
    }

    #[test]
    fn event_serialises_with_timestamp_first() {
        let ts = Timestamp {
            seconds: 1_700_000_000,
            microseconds: 42,
        };
        assert_eq!(
            Session::event(&Event::Stop, ts),
            b"{\"timestamp\":{\"seconds\":1700000000,\"microseconds\":42},\"event\":\"STOP\"}\r\n"
                .to_vec()
        );
        let shutdown = ShutdownInfo {
            guest: false,
            reason: ShutdownCause::HostQmpQuit,
        };
        assert_eq!(
            Session::event(&Event::Shutdown(shutdown), ts),
            b"{\"timestamp\":{\"seconds\":1700000000,\"microseconds\":42},\"event\":\"SHUTDOWN\",\
              \"data\":{\"guest\":false,\"reason\":\"host-qmp-quit\"}}\r\n"
                .to_vec()
        );
    }

    #[test]
    fn device_deleted_event_carries_device_and_path() {
        let info = DeviceDeletedInfo {
            device: Some("vdb".to_owned()),
            path: "vdb".to_owned(),
        };
        let bytes = Session::event(
            &Event::DeviceDeleted(info),
            Timestamp {
                seconds: 1,
                microseconds: 2,
            },
        );
        let value: Value = serde_json::from_slice(&bytes).expect("JSON");
        assert_eq!(value["data"], json!({"device": "vdb", "path": "vdb"}));
    }

    #[test]
    fn every_error_class_serialises_in_a_reply() {
        let classes = [
            (ErrorClass::GenericError, "GenericError"),
            (ErrorClass::CommandNotFound, "CommandNotFound"),
            (ErrorClass::DeviceNotActive, "DeviceNotActive"),
            (ErrorClass::DeviceNotFound, "DeviceNotFound"),
            (ErrorClass::KvmMissingCap, "KVMMissingCap"),
        ];
        for (class, name) in classes {
            let bytes = Session::reply(Some(json!(1)), Err(QmpError::new(class, "d")));
            let expected =
                format!("{{\"error\":{{\"class\":\"{name}\",\"desc\":\"d\"}},\"id\":1}}\r\n");
            assert_eq!(String::from_utf8(bytes).expect("UTF-8"), expected);
        }
    }

    /// xorshift64*, so the fuzz input is the same on every run.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    #[test]
    fn random_bytes_never_panic_and_buffer_stays_bounded() {
        let alphabet = b"{}[]:,\"'\\ \n\r\tabcdefnrtulse0123456789-+.eE@\x00\xff\xc3";
        let seeds: [&[u8]; 3] = [
            br#"{"execute":"qmp_capabilities"}"#,
            br#"{"execute":"device_add","arguments":{"driver":"virtio-blk-mmio","addr":"0x1"}}"#,
            br#"{"execute":"blockdev-add","arguments":{"node-name":"d","driver":"raw","file":{"driver":"file","filename":"/x"}}}"#,
        ];
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut s = Session::with_input_limit(VersionInfo::nimbus("fuzz"), 4096);
        for _ in 0..10_000 {
            // One iteration in four is pure noise; the others are mutated valid commands.
            let noise = rng.next() & 3 == 0;
            let mut chunk = if noise {
                Vec::new()
            } else {
                seeds[(rng.next() % 3) as usize].to_vec()
            };
            let len = (rng.next() % if noise { 256 } else { 64 }) as usize;
            for _ in 0..len {
                let r = rng.next();
                let byte = if r & 1 == 0 {
                    alphabet[(r >> 8) as usize % alphabet.len()]
                } else {
                    (r >> 16) as u8
                };
                let at = (r >> 24) as usize % (chunk.len() + 1);
                chunk.insert(at, byte);
            }
            let cut = (rng.next() as usize) % (chunk.len() + 1);
            for part in [&chunk[..cut], &chunk[cut..]] {
                for incoming in s.feed(part) {
                    if let Incoming::Reply(bytes) | Incoming::Overflow(bytes) = incoming {
                        assert!(serde_json::from_slice::<Value>(&bytes).is_ok());
                    }
                }
            }
            assert!(s.buffered() <= 4096);
        }
    }
}
