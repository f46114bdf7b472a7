//! A chardev's event-loop subscriber: accepts socket clients (one at a time), reads input for
//! the front end and tells it when a slow reader made room again.
//!
//! Sockets and ptys are watched edge-triggered for input, room to write and hang-up, and read
//! until empty; stdin is watched level-triggered (as the control subscriber watches it for
//! `-serial stdio`). A client that leaves is closed after it left the loop, and the listener
//! is watched again for the next one.

use super::{Input, SharedChardev};
use crate::event_loop::{input, unwatch, watch};
use address_space::sync::lock;
use event_manager::{EventOps, Events, MutEventSubscriber};
use std::os::fd::RawFd;
use vmm_sys_util::epoll::EventSet;

/// Most bytes read from a chardev per event (the rest comes with the next event).
const MAX_READ_PER_EVENT: usize = 64 * 1024;

/// The device a chardev feeds.
pub trait Frontend: Send {
    /// Input for the guest.
    fn receive(&mut self, data: &[u8]);
    /// The chardev can take output again (a stalled port resumes).
    fn writable(&mut self) {}
}

/// The chardev's sources, as their events' data.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    /// The listening socket has a client waiting.
    Listener,
    /// The pty, the socket peer or stdin is ready.
    Data,
}

impl Token {
    fn from_data(data: u32) -> Option<Token> {
        [Token::Listener, Token::Data]
            .into_iter()
            .find(|t| *t as u32 == data)
    }
}

/// Edge-triggered input, output and hang-up of a pty or socket.
fn data_events(fd: RawFd) -> Events {
    let set = EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED;
    Events::with_data_raw(fd, Token::Data as u32, set)
}

/// One chardev on the loop with the front end it feeds.
pub struct ChardevEvents {
    chardev: SharedChardev,
    frontend: Box<dyn Frontend>,
}

impl ChardevEvents {
    /// The subscriber of `chardev`, feeding `frontend`.
    pub fn new(chardev: SharedChardev, frontend: Box<dyn Frontend>) -> ChardevEvents {
        lock(&chardev).attach_frontend();
        ChardevEvents { chardev, frontend }
    }

    fn watch_input(&self, ops: &mut EventOps) {
        let chardev = lock(&self.chardev);
        if let Some(fd) = chardev.listener_fd() {
            watch(ops, input(fd, Token::Listener as u32), "a chardev listener");
        }
        match chardev.input_fd() {
            Some(fd) if chardev.is_stdio() => {
                if let Err(e) = ops.add(input(fd, Token::Data as u32)) {
                    // Regular files and /dev/null cannot be polled: no live input.
                    log::debug!("stdin cannot be polled ({e}); console input is off");
                }
            }
            Some(fd) => watch(ops, data_events(fd), "a chardev"),
            None => {}
        }
    }

    fn accept(&mut self, events: Events, ops: &mut EventOps) {
        let accepted = lock(&self.chardev).accept();
        if let Some(fd) = accepted {
            unwatch(ops, events, "a chardev listener");
            watch(ops, data_events(fd), "a chardev client");
        }
    }

    fn data(&mut self, events: Events, ops: &mut EventOps) {
        let set = events.event_set();
        if set.contains(EventSet::OUT) {
            self.frontend.writable();
        }
        if !set
            .intersects(EventSet::IN | EventSet::HANG_UP | EventSet::READ_HANG_UP | EventSet::ERROR)
        {
            return;
        }
        let stdio = lock(&self.chardev).is_stdio();
        let mut buf = [0u8; 4096];
        let mut read = 0;
        loop {
            let got = lock(&self.chardev).read_input(&mut buf);
            match got {
                Input::Data(n) => {
                    self.frontend.receive(&buf[..n]);
                    read += n;
                    // Stdin is level-triggered: one read per event.
                    if stdio || read >= MAX_READ_PER_EVENT {
                        return;
                    }
                }
                Input::Empty => return,
                Input::Closed => break,
            }
        }
        unwatch(ops, events, "a chardev");
        let gone = lock(&self.chardev).disconnect();
        drop(gone);
        // Output now goes nowhere (dropped): a port that waited for the peer goes on.
        self.frontend.writable();
        if let Some(fd) = lock(&self.chardev).listener_fd() {
            watch(ops, input(fd, Token::Listener as u32), "a chardev listener");
        }
    }
}

impl MutEventSubscriber for ChardevEvents {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match Token::from_data(events.data()) {
            Some(Token::Listener) => self.accept(events, ops),
            Some(Token::Data) => self.data(events, ops),
            None => log::warn!("chardev event with unknown token {}", events.data()),
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        self.watch_input(ops);
    }
}

/// The UART as a chardev front end: input is queued for its FIFO.
pub struct SerialFrontend(pub std::sync::Arc<std::sync::Mutex<devices::Serial>>);

impl Frontend for SerialFrontend {
    fn receive(&mut self, data: &[u8]) {
        if let Err(err) = lock(&self.0).queue_input(data) {
            log::warn!("serial input: {err}");
        }
    }
}

/// A virtconsole port as a chardev front end.
pub struct ConsoleFrontend(pub virtio::Shared<virtio::Console>);

impl Frontend for ConsoleFrontend {
    fn receive(&mut self, data: &[u8]) {
        self.0.lock().queue_input(data);
    }

    fn writable(&mut self) {
        self.0.lock().resume_output();
    }
}
