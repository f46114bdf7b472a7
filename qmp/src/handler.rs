//! The interface the machine implements to carry out commands, and a driver that runs a
//! session's input through it.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::command::Command;
use crate::error::QmpError;
use crate::schema::ShutdownCause;
use crate::session::{Incoming, Request, Session};

/// Carries out QMP commands. The machine implements it; one plain `match` on [`Command`].
pub trait QmpHandler {
    /// Execute `command` and return the `return` value (and what to do once it is sent), or
    /// the error to reply with.
    fn execute(&mut self, command: Command) -> Result<Response, QmpError>;
}

/// A successful command's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// The `return` member.
    pub value: Value,
    /// What the caller must do after the reply has been written.
    pub after: AfterReply,
}

/// What has to happen once the reply is on its way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AfterReply {
    /// Nothing: keep serving.
    #[default]
    Nothing,
    /// Shut the VM down (send `SHUTDOWN` with `guest: false` and this reason, then exit):
    /// `quit`, `system_reset` on microvm, `system_powerdown` without ACPI.
    Shutdown(ShutdownCause),
}

impl Response {
    /// `value`, nothing to do afterwards.
    pub fn new(value: Value) -> Response {
        Response {
            value,
            after: AfterReply::Nothing,
        }
    }

    /// The empty return `{}` of commands without a result.
    pub fn empty() -> Response {
        Response::new(Value::Object(Map::new()))
    }

    /// Serialise a schema value (e.g. a [`StatusInfo`](crate::schema::StatusInfo)).
    pub fn from_serialize<T: Serialize>(value: &T) -> Result<Response, QmpError> {
        serde_json::to_value(value)
            .map(Response::new)
            .map_err(|e| QmpError::generic(format!("cannot encode the result: {e}")))
    }

    /// The same response, with `after` to do once it is sent.
    pub fn then(self, after: AfterReply) -> Response {
        Response { after, ..self }
    }
}

impl From<Value> for Response {
    fn from(value: Value) -> Response {
        Response::new(value)
    }
}

/// The outcome of [`Session::serve`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Served {
    /// Replies to write to the client, in order.
    pub output: Vec<u8>,
    /// A follow-up action requested by a command; input after that command was dropped.
    pub after: AfterReply,
    /// The client overflowed the input limit; write `output` if possible, then drop it.
    pub overflow: bool,
}

impl Session {
    /// Feed `input`, execute each request on `handler` in order, and collect the replies.
    /// Stops early after a command that asks for a shutdown, or on overflow.
    pub fn serve<H: QmpHandler + ?Sized>(&mut self, input: &[u8], handler: &mut H) -> Served {
        let mut served = Served::default();
        for incoming in self.feed(input) {
            match incoming {
                Incoming::Reply(bytes) => served.output.extend(bytes),
                Incoming::Overflow(bytes) => {
                    served.output.extend(bytes);
                    served.overflow = true;
                    break;
                }
                Incoming::Request(Request { id, command }) => {
                    let result = handler.execute(command);
                    let after = result.as_ref().map_or(AfterReply::Nothing, |r| r.after);
                    served
                        .output
                        .extend(Session::reply(id, result.map(|r| r.value)));
                    if after != AfterReply::Nothing {
                        served.after = after;
                        break;
                    }
                }
            }
        }
        served
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::query_commands;
    use crate::schema::{StatusInfo, VersionInfo};
    use serde_json::json;

    /// A stand-in machine: runs and pauses, knows no devices.
    #[derive(Default)]
    struct FakeMachine {
        paused: bool,
        executed: Vec<&'static str>,
    }

    impl QmpHandler for FakeMachine {
        fn execute(&mut self, command: Command) -> Result<Response, QmpError> {
            self.executed.push(command.name());
            match command {
                Command::QueryStatus => Response::from_serialize(&StatusInfo::new(!self.paused)),
                Command::Stop => {
                    self.paused = true;
                    Ok(Response::empty())
                }
                Command::Quit => {
                    Ok(Response::empty().then(AfterReply::Shutdown(ShutdownCause::HostQmpQuit)))
                }
                Command::QueryCommands => Response::from_serialize(&query_commands()),
                Command::DeviceDel(args) => Err(QmpError::device_not_found(&args.id)),
                Command::QueryBalloon => Err(QmpError::device_not_active("No balloon device")),
                _ => Ok(Response::empty()),
            }
        }
    }

    fn negotiated() -> Session {
        let mut s = Session::new(VersionInfo::nimbus("0.1.0"));
        let served = s.serve(
            b"{\"execute\":\"qmp_capabilities\"}",
            &mut FakeMachine::default(),
        );
        assert_eq!(served.output, b"{\"return\":{}}\r\n");
        s
    }

    fn lines(output: &[u8]) -> Vec<Value> {
        output
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).expect("each line is JSON"))
            .collect()
    }

    #[test]
    fn serve_answers_requests_and_session_errors_in_order() {
        let mut machine = FakeMachine::default();
        let input = b"{\"execute\":\"stop\",\"id\":1}junk\n{\"execute\":\"query-status\",\"id\":2}";
        let served = negotiated().serve(input, &mut machine);
        let replies = lines(&served.output);
        assert_eq!(replies[0], json!({"return": {}, "id": 1}));
        assert_eq!(replies[1]["error"]["class"], json!("GenericError"));
        assert_eq!(
            replies[2],
            json!({"return": {"running": false, "singlestep": false, "status": "paused"}, "id": 2})
        );
        assert_eq!(served.after, AfterReply::Nothing);
    }

    #[test]
    fn quit_replies_first_then_asks_for_shutdown_and_drops_the_rest() {
        let mut machine = FakeMachine::default();
        let served = negotiated().serve(
            b"{\"execute\":\"quit\",\"id\":\"q\"}{\"execute\":\"stop\"}",
            &mut machine,
        );
        assert_eq!(served.output, b"{\"return\":{},\"id\":\"q\"}\r\n");
        assert_eq!(
            served.after,
            AfterReply::Shutdown(ShutdownCause::HostQmpQuit)
        );
        assert_eq!(machine.executed, ["quit"]);
    }

    #[test]
    fn handler_errors_are_sent_with_their_class() {
        let mut machine = FakeMachine::default();
        let input = b"{\"execute\":\"device_del\",\"arguments\":{\"id\":\"vdz\"}}\
                      {\"execute\":\"query-balloon\"}";
        let replies = lines(&negotiated().serve(input, &mut machine).output);
        assert_eq!(
            replies[0],
            json!({"error": {"class": "DeviceNotFound", "desc": "Device 'vdz' not found"}})
        );
        assert_eq!(replies[1]["error"]["class"], json!("DeviceNotActive"));
    }

    #[test]
    fn overflow_stops_serving_and_is_flagged() {
        let mut s = Session::with_input_limit(VersionInfo::nimbus("0.1.0"), 32);
        let served = s.serve(&[b'['; 64], &mut FakeMachine::default());
        assert!(served.overflow);
        assert_eq!(lines(&served.output).len(), 1);
    }

    #[test]
    fn ten_thousand_commands_in_one_burst_all_get_replies() {
        let mut machine = FakeMachine::default();
        let input = b"{\"execute\":\"query-status\"}\n".repeat(10_000);
        let served = negotiated().serve(&input, &mut machine);
        assert_eq!(lines(&served.output).len(), 10_000);
    }

    #[test]
    fn query_commands_answer_lists_names() {
        let mut machine = FakeMachine::default();
        let served = negotiated().serve(b"{\"execute\":\"query-commands\"}", &mut machine);
        let reply = &lines(&served.output)[0];
        assert!(reply["return"]
            .as_array()
            .expect("list")
            .contains(&json!({"name": "device_add"})));
    }
}
