//! The VMM thread's epoll loop: a thin wrapper over epoll with a token enum per source.

use std::io;
use std::os::fd::RawFd;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

/// Every event source of the VMM thread.
#[repr(u64)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    /// Console input on stdin.
    Stdin = 0,
    /// A vCPU thread stopped and sent its report.
    VcpuStopped = 1,
    /// The guest pulsed the i8042 reset line.
    I8042Reset = 2,
    /// SIGTERM, SIGINT or SIGHUP arrived.
    StopSignal = 3,
    /// A client connects to the QMP socket.
    QmpListener = 4,
    /// The QMP client sent something or can take more output.
    QmpClient = 5,
}

impl Token {
    /// Every token, for mapping epoll data back.
    const ALL: [Token; 6] = [
        Token::Stdin,
        Token::VcpuStopped,
        Token::I8042Reset,
        Token::StopSignal,
        Token::QmpListener,
        Token::QmpClient,
    ];

    fn from_raw(raw: u64) -> Option<Token> {
        Token::ALL.into_iter().find(|t| *t as u64 == raw)
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
            EpollEvent::new(EventSet::IN, token as u64),
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
            EpollEvent::new(events, token as u64),
        )
    }

    /// Stops watching `fd`.
    pub fn remove(&self, fd: RawFd) -> io::Result<()> {
        self.epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default())
    }

    /// Waits for events (EINTR is retried) and returns their tokens.
    pub fn wait(&self) -> io::Result<Vec<Token>> {
        let mut events = [EpollEvent::default(); 8];
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
        // A variant missing from ALL would never be delivered: match forces this list to grow.
        let all = |t: Token| match t {
            Token::Stdin
            | Token::VcpuStopped
            | Token::I8042Reset
            | Token::StopSignal
            | Token::QmpListener
            | Token::QmpClient => Token::ALL.contains(&t),
        };
        for raw in 0..Token::ALL.len() as u64 {
            let token = Token::from_raw(raw).expect("every value up to the count is a token");
            assert!(all(token));
        }
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
