//! A fault-injecting TCP proxy (in the spirit of toxiproxy), for the faults nftables cannot make
//! on this kernel (no `sch_netem`): delay, jitter, re-segmentation and bit flips on the wire.
//!
//! Each direction of each connection is a pump: a reader thread stamps every chunk it receives
//! with a delivery time (`delay` plus a uniform `jitter`, never earlier than the chunk before it,
//! as TCP keeps order) and a writer thread delivers it then, possibly cut into smaller writes.
//! Chunks on different connections overtake each other, so a node sees its control and
//! replication traffic reordered against each other — the same model as the failover
//! simulation's per-message delays (`nonstop-sim`), restricted to what TCP can show an
//! application. A bit flip changes one bit of a chunk; the frame checksums must catch it.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The faults a proxy applies, changeable while it runs.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LinkFaults {
    /// Added to every chunk's delivery.
    pub delay: Duration,
    /// Up to this much more, uniformly at random, per chunk.
    pub jitter: Duration,
    /// Deliver chunks in random smaller pieces.
    pub resegment: bool,
    /// Flip one random bit in a chunk with this probability.
    pub bit_flip: f64,
}

/// What a proxy did.
#[derive(Debug, Default)]
pub struct ProxyCounters {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Bytes forwarded.
    pub bytes: AtomicU64,
    /// Bits flipped.
    pub bit_flips: AtomicU64,
}

struct Shared {
    faults: RwLock<LinkFaults>,
    counters: ProxyCounters,
    stop: AtomicBool,
    seed: AtomicU64,
}

impl Shared {
    fn faults(&self) -> LinkFaults {
        *self.faults.read().unwrap_or_else(|p| p.into_inner())
    }

    fn rng(&self) -> SmallRng {
        SmallRng::seed_from_u64(self.seed.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed))
    }
}

/// A proxy from `listen` to `upstream`; stops on drop (connections in flight end with it).
pub struct FaultProxy {
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
    /// Where it listens.
    pub listen: SocketAddr,
}

/// How often the acceptor looks at the stop flag.
const POLL: Duration = Duration::from_millis(20);

impl FaultProxy {
    /// Starts a proxy; its threads first run `setup` (e.g. to enter a network namespace), so the
    /// listening socket and the upstream connections are made where `setup` puts them.
    pub fn start(
        listen: SocketAddr,
        upstream: SocketAddr,
        seed: u64,
        setup: impl Fn() + Send + Sync + 'static,
    ) -> std::io::Result<FaultProxy> {
        let shared = Arc::new(Shared {
            faults: RwLock::new(LinkFaults::default()),
            counters: ProxyCounters::default(),
            stop: AtomicBool::new(false),
            seed: AtomicU64::new(seed),
        });
        let setup = Arc::new(setup);
        let (ready, bound) = mpsc::channel();
        let acceptor = {
            let shared = shared.clone();
            std::thread::Builder::new().name(format!("proxy-{listen}")).spawn(move || {
                setup();
                let listener = match TcpListener::bind(listen).and_then(|l| l.set_nonblocking(true).map(|_| l)) {
                    Ok(listener) => {
                        let _ = ready.send(Ok(()));
                        listener
                    }
                    Err(error) => {
                        let _ = ready.send(Err(error));
                        return;
                    }
                };
                while !shared.stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            shared.counters.connections.fetch_add(1, Ordering::Relaxed);
                            let (shared, setup) = (shared.clone(), setup.clone());
                            let _ = std::thread::Builder::new().name("proxy-conn".into()).spawn(move || {
                                setup();
                                connect(client, upstream, &shared);
                            });
                        }
                        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(POLL),
                        Err(_) => std::thread::sleep(POLL),
                    }
                }
            })?
        };
        bound.recv().map_err(|_| std::io::Error::other("proxy thread ended before binding"))??;
        Ok(FaultProxy { shared, acceptor: Some(acceptor), listen })
    }

    /// Applies `faults` from now on.
    pub fn set(&self, faults: LinkFaults) {
        *self.shared.faults.write().unwrap_or_else(|p| p.into_inner()) = faults;
    }

    /// What it did so far.
    pub fn counters(&self) -> &ProxyCounters {
        &self.shared.counters
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn connect(client: TcpStream, upstream: SocketAddr, shared: &Arc<Shared>) {
    let _ = client.set_nonblocking(false);
    let Ok(server) = TcpStream::connect_timeout(&upstream, Duration::from_millis(500)) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    for stream in [&client, &server] {
        let _ = stream.set_nodelay(true);
        // Reads wake up now and then to notice the proxy stopping.
        let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    }
    let pumps = [(&client, &server), (&server, &client)].map(|(from, to)| {
        let (from, to) = (from.try_clone(), to.try_clone());
        let shared = shared.clone();
        std::thread::Builder::new().name("proxy-pump".into()).spawn(move || {
            if let (Ok(from), Ok(to)) = (from, to) {
                pump(from, to, &shared);
            }
        })
    });
    for pump in pumps.into_iter().flatten() {
        let _ = pump.join();
    }
}

/// Forwards `from` to `to` with the faults, until either end closes; then closes both.
fn pump(mut from: TcpStream, to: TcpStream, shared: &Arc<Shared>) {
    let (chunks, delivery) = mpsc::channel::<(Instant, Vec<u8>, bool)>();
    let writer = {
        let (mut to, shared) = (to.try_clone(), shared.clone());
        std::thread::Builder::new().name("proxy-deliver".into()).spawn(move || {
            let Ok(to) = to.as_mut() else { return };
            let mut rng = shared.rng();
            for (due, bytes, resegment) in delivery {
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                let mut rest = bytes.as_slice();
                while !rest.is_empty() {
                    let piece = if resegment { rng.random_range(1..=rest.len()) } else { rest.len() };
                    if to.write_all(&rest[..piece]).is_err() {
                        return;
                    }
                    rest = &rest[piece..];
                }
            }
        })
    };
    let mut rng = shared.rng();
    let mut last_due = Instant::now();
    let mut buffer = vec![0u8; 64 << 10];
    while !shared.stop.load(Ordering::Relaxed) {
        let n = match from.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(error) if matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                continue;
            }
            Err(_) => break,
        };
        let faults = shared.faults();
        let mut bytes = buffer[..n].to_vec();
        if faults.bit_flip > 0.0 && rng.random_bool(faults.bit_flip.min(1.0)) {
            let bit = rng.random_range(0..n * 8);
            bytes[bit / 8] ^= 1 << (bit % 8);
            shared.counters.bit_flips.fetch_add(1, Ordering::Relaxed);
        }
        let jitter =
            if faults.jitter.is_zero() { Duration::ZERO } else { rng.random_range(Duration::ZERO..faults.jitter) };
        last_due = last_due.max(Instant::now() + faults.delay + jitter);
        shared.counters.bytes.fetch_add(n as u64, Ordering::Relaxed);
        if chunks.send((last_due, bytes, faults.resegment)).is_err() {
            break;
        }
    }
    drop(chunks);
    if let Ok(writer) = writer {
        let _ = writer.join();
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut reader = stream.try_clone().unwrap();
                    let mut writer = stream;
                    let _ = std::io::copy(&mut reader, &mut writer);
                });
            }
        });
        addr
    }

    fn round_trip(proxy: &FaultProxy, payload: &[u8]) -> (Vec<u8>, Duration) {
        let mut stream = TcpStream::connect(proxy.listen).unwrap();
        let started = Instant::now();
        stream.write_all(payload).unwrap();
        let mut back = vec![0u8; payload.len()];
        stream.read_exact(&mut back).unwrap();
        (back, started.elapsed())
    }

    #[test]
    fn bytes_arrive_in_order_delayed_resegmented_and_flipped_only_when_asked() {
        let upstream = echo_server();
        let listen = {
            let probe = TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap()
        };
        let proxy = FaultProxy::start(listen, upstream, 7, || {}).unwrap();
        let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(round_trip(&proxy, &payload).0, payload);
        proxy.set(LinkFaults {
            delay: Duration::from_millis(30),
            jitter: Duration::from_millis(10),
            resegment: true,
            bit_flip: 0.0,
        });
        let (back, took) = round_trip(&proxy, &payload);
        assert_eq!(back, payload, "delay, jitter and resegmenting keep the bytes and their order");
        assert!(took >= Duration::from_millis(60), "both directions are delayed: {took:?}");
        proxy.set(LinkFaults { bit_flip: 1.0, ..LinkFaults::default() });
        let (back, _) = round_trip(&proxy, &payload[..1000]);
        assert_ne!(back, &payload[..1000], "a flip on every chunk shows");
        assert!(proxy.counters().bit_flips.load(Ordering::Relaxed) >= 1);
    }
}
