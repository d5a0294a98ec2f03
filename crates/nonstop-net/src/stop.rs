//! A stop signal that also wakes a thread blocked waiting for a connection.
//!
//! Setting a flag does not wake a thread blocked in `accept`, and connecting to one's own port
//! to wake it fails exactly when the network is faulty (a dropped or filtered address), which
//! is when a backup is promoted: the promotion would wait for the acceptor for ever. So the
//! signal is an eventfd as well, polled beside the listening socket.

use rustix::event::{EventfdFlags, PollFd, PollFlags, eventfd, poll};
use std::net::{TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};

/// A one-way stop: once [`StopSignal::stop`] is called, [`StopSignal::is_stopped`] is true and
/// every [`StopSignal::accept`] returns `None`.
#[derive(Debug)]
pub struct StopSignal {
    stopped: AtomicBool,
    /// Readable once stopped (a nonzero counter that nobody reads back).
    wake: OwnedFd,
}

impl StopSignal {
    /// A signal not given yet. Fails only if the process is out of file descriptors.
    pub fn new() -> std::io::Result<StopSignal> {
        let wake = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        Ok(StopSignal { stopped: AtomicBool::new(false), wake })
    }

    /// Gives the signal, waking whoever waits in [`StopSignal::accept`].
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        // The counter saturates only after 2^64 - 2 writes: a failed write means it is nonzero.
        let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
    }

    /// Whether the signal was given.
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// The next connection on `listener` (made nonblocking here; the connection itself is
    /// blocking), or `None` once the signal is given. Errors are accept's (most likely out
    /// of descriptors); the caller decides whether to retry.
    pub fn accept(&self, listener: &TcpListener) -> Option<std::io::Result<TcpStream>> {
        if let Err(error) = listener.set_nonblocking(true) {
            return Some(Err(error));
        }
        loop {
            if self.is_stopped() {
                return None;
            }
            let mut fds = [PollFd::new(listener, PollFlags::IN), PollFd::new(&self.wake, PollFlags::IN)];
            match poll(&mut fds, None) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(error) => return Some(Err(error.into())),
            }
            if self.is_stopped() {
                return None;
            }
            if fds[0].revents().is_empty() {
                continue;
            }
            match listener.accept() {
                Ok((stream, _)) => return Some(stream.set_nonblocking(false).map(|()| stream)),
                // Another thread took it, or the peer reset it before it was accepted.
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(error) => return Some(Err(error)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn a_stop_wakes_an_accept_without_any_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let signal = Arc::new(StopSignal::new().unwrap());
        let waiting = {
            let signal = signal.clone();
            std::thread::spawn(move || signal.accept(&listener).is_none())
        };
        std::thread::sleep(Duration::from_millis(20));
        assert!(!waiting.is_finished(), "nothing to accept yet");
        signal.stop();
        assert!(waiting.join().unwrap(), "woken by the signal, not by a connection");
        assert!(signal.is_stopped());
    }

    #[test]
    fn connections_are_accepted_until_the_stop() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let signal = StopSignal::new().unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        signal.accept(&listener).expect("not stopped").expect("accepted");
        signal.stop();
        let _late = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        assert!(signal.accept(&listener).is_none(), "a pending connection does not outrun a stop");
    }
}
