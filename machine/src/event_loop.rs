//! The VMM thread's epoll loop: a thin wrapper over epoll with a token enum per source.

use std::io;
use std::os::fd::RawFd;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

/// Every event source of the VMM thread. Fixed sources have fixed values; device event sources
/// (ioeventfds, I/O completion eventfds, taps: see `device_events.rs`) are `Device(index)`,
/// numbered from [`Token::DEVICE_BASE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    /// Console input on stdin.
    Stdin,
    /// A vCPU thread stopped and sent its report.
    VcpuStopped,
    /// The guest pulsed the i8042 reset line.
    I8042Reset,
    /// SIGTERM, SIGINT or SIGHUP arrived.
    StopSignal,
    /// A client connects to the QMP socket.
    QmpListener,
    /// The QMP client sent something or can take more output.
    QmpClient,
    /// Device event source number `n` of the machine's `DeviceEvents`.
    Device(u32),
}

impl Token {
    /// The first raw value of device event sources; fixed tokens are below it.
    pub const DEVICE_BASE: u64 = 1 << 32;

    /// The epoll data word of this token.
    pub fn raw(self) -> u64 {
        match self {
            Token::Stdin => 0,
            Token::VcpuStopped => 1,
            Token::I8042Reset => 2,
            Token::StopSignal => 3,
            Token::QmpListener => 4,
            Token::QmpClient => 5,
            Token::Device(n) => Token::DEVICE_BASE + u64::from(n),
        }
    }

    /// The token whose [`Token::raw`] is `raw`, if any.
    fn from_raw(raw: u64) -> Option<Token> {
        Some(match raw {
            0 => Token::Stdin,
            1 => Token::VcpuStopped,
            2 => Token::I8042Reset,
            3 => Token::StopSignal,
            4 => Token::QmpListener,
            5 => Token::QmpClient,
            _ => Token::Device(u32::try_from(raw.checked_sub(Token::DEVICE_BASE)?).ok()?),
        })
    }
}

/// An epoll set whose events come back as tokens.
pub struct EventLoop {
    epoll: Epoll,
}

impl EventLoop {
    /// An empty loop.
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            epoll: Epoll::new()?,
        })
    }

    /// Watches `fd` for input.
    pub fn add(&self, fd: RawFd, token: Token) -> io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, token.raw()),
        )
    }

    /// Watches `fd` for input, and for room to write when `want_write`.
    pub fn modify(&self, fd: RawFd, token: Token, want_write: bool) -> io::Result<()> {
        let events = if want_write {
            EventSet::IN | EventSet::OUT
        } else {
            EventSet::IN
        };
        self.epoll.ctl(
            ControlOperation::Modify,
            fd,
            EpollEvent::new(events, token.raw()),
        )
    }

    /// Stops watching `fd`.
    pub fn remove(&self, fd: RawFd) -> io::Result<()> {
        self.epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default())
    }

    /// Waits for events (EINTR is retried) and returns their tokens.
    pub fn wait(&self) -> io::Result<Vec<Token>> {
        let mut events = [EpollEvent::default(); 32];
        loop {
            match self.epoll.wait(-1, &mut events) {
                Ok(n) => {
                    return Ok(events[..n]
                        .iter()
                        .filter_map(|e| Token::from_raw(e.data()))
                        .collect())
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(err),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    #[test]
    fn every_token_maps_back_from_its_raw_value() {
        let tokens = [
            Token::Stdin,
            Token::VcpuStopped,
            Token::I8042Reset,
            Token::StopSignal,
            Token::QmpListener,
            Token::QmpClient,
            Token::Device(0),
            Token::Device(7),
            Token::Device(u32::MAX),
        ];
        for token in tokens {
            assert_eq!(Token::from_raw(token.raw()), Some(token));
        }
    }

    #[test]
    fn raw_values_between_fixed_and_device_tokens_or_past_them_are_none() {
        assert_eq!(Token::from_raw(6), None);
        assert_eq!(Token::from_raw(Token::DEVICE_BASE - 1), None);
        assert_eq!(Token::from_raw(Token::DEVICE_BASE + (1 << 32)), None);
    }

    #[test]
    fn device_fd_comes_back_as_its_device_token() {
        let lp = EventLoop::new().expect("epoll");
        let evt = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        lp.add(evt.as_raw_fd(), Token::Device(3)).expect("add");
        evt.write(1).expect("write");
        assert_eq!(lp.wait().expect("wait"), vec![Token::Device(3)]);
    }

    #[test]
    fn ready_fd_comes_back_as_its_token() {
        let lp = EventLoop::new().expect("epoll");
        let evt = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        lp.add(evt.as_raw_fd(), Token::I8042Reset).expect("add");
        evt.write(1).expect("write");
        assert_eq!(lp.wait().expect("wait"), vec![Token::I8042Reset]);
    }

    #[test]
    fn removed_fd_is_no_longer_reported() {
        let lp = EventLoop::new().expect("epoll");
        let a = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let b = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        lp.add(a.as_raw_fd(), Token::Stdin).expect("add");
        lp.add(b.as_raw_fd(), Token::VcpuStopped).expect("add");
        lp.remove(a.as_raw_fd()).expect("remove");
        a.write(1).expect("write");
        b.write(1).expect("write");
        assert_eq!(lp.wait().expect("wait"), vec![Token::VcpuStopped]);
    }
}
