//! Prometheus metrics: the node's status in the text exposition format, served on
//! `GET /metrics` at the address `[node] metrics` names.

use crate::status::NodeStatus;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Escapes a label value (backslash, double quote, newline).
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The status as Prometheus text.
///
/// ```
/// use nonstop_node::status::NodeStatus;
/// let text = nonstop_node::metrics::render(&NodeStatus { node: 2, raft_term: 5, ..Default::default() });
/// assert!(text.contains("nonstop_raft_term{node=\"2\"} 5"));
/// ```
pub fn render(status: &NodeStatus) -> String {
    let mut out = String::new();
    let node = status.node;
    let mut metric = |name: &str, kind: &str, help: &str, samples: Vec<(String, f64)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{{node=\"{node}\"{labels}}} {value}");
        }
    };
    metric(
        "nonstop_raft_term",
        "gauge",
        "The control plane's Raft term.",
        vec![(String::new(), status.raft_term as f64)],
    );
    metric(
        "nonstop_control_leader",
        "gauge",
        "The control-plane leader this node knows (0: none).",
        vec![(String::new(), status.leader.unwrap_or(0) as f64)],
    );
    metric(
        "nonstop_peer_alive",
        "gauge",
        "1 if this node believes the peer alive.",
        status.alive.iter().map(|peer| (format!(",peer=\"{peer}\""), 1.0)).collect(),
    );
    let per_service = |f: &dyn Fn(&crate::status::ServiceStatus) -> Option<f64>| {
        status
            .services
            .iter()
            .filter_map(|s| f(s).map(|v| (format!(",service=\"{}\"", label(&s.name)), v)))
            .collect::<Vec<_>>()
    };
    metric("nonstop_service_term", "gauge", "The service's current term.", per_service(&|s| Some(s.term as f64)));
    metric("nonstop_service_primary", "gauge", "The service's primary node.", per_service(&|s| Some(s.primary as f64)));
    metric(
        "nonstop_service_backups",
        "gauge",
        "Backups the record names for the service.",
        per_service(&|s| Some(s.backups.len() as f64)),
    );
    metric(
        "nonstop_service_catching_up",
        "gauge",
        "Holders a promotion kept that the new primary is bringing to its checkpoint.",
        per_service(&|s| Some(s.catching_up.len() as f64)),
    );
    metric(
        "nonstop_service_degraded",
        "gauge",
        "1 while the record names fewer backups than the service wants (after a failover or a lost backup).",
        per_service(&|s| Some(f64::from(u8::from(s.degraded)))),
    );
    metric(
        "nonstop_service_holding_output",
        "gauge",
        "1 while the record names fewer backups than min_backups: the primary holds its replies.",
        per_service(&|s| Some(f64::from(u8::from(s.holding_output)))),
    );
    metric(
        "nonstop_service_unprotected_seconds_total",
        "counter",
        "Seconds this node served the service as primary with fewer backups than wanted.",
        per_service(&|s| Some(s.unprotected_seconds)),
    );
    metric(
        "nonstop_service_held_checkpoint",
        "gauge",
        "The checkpoint this node holds (backup) or has released (primary).",
        per_service(&|s| s.held.map(|h| h as f64)),
    );
    metric(
        "nonstop_service_region_bytes",
        "gauge",
        "Bytes of region the node holds for the service: a standby's image or the primary's region (resident in full except a transparent-mode primary's).",
        per_service(&|s| Some(s.region_bytes as f64)),
    );
    metric(
        "nonstop_service_failovers_total",
        "counter",
        "Failovers of the service (switchovers excluded).",
        per_service(&|s| Some(s.failovers as f64)),
    );
    metric(
        "nonstop_service_tracking",
        "gauge",
        "1 for the way the service's writes are found: declared, uffd or mprotect.",
        status
            .services
            .iter()
            .map(|s| (format!(",service=\"{}\",tracking=\"{}\"", label(&s.name), label(&s.tracking)), 1.0))
            .collect(),
    );
    metric(
        "nonstop_service_role",
        "gauge",
        "1 for the role this node plays in the service.",
        status
            .services
            .iter()
            .map(|s| (format!(",service=\"{}\",role=\"{}\"", label(&s.name), label(&s.role)), 1.0))
            .collect(),
    );
    let lag = |pick: fn(&crate::status::BackupLagStatus) -> u64| {
        status
            .services
            .iter()
            .flat_map(|s| {
                s.lag.iter().map(move |entry| {
                    (format!(",service=\"{}\",backup=\"{}\"", label(&s.name), entry.backup), pick(entry) as f64)
                })
            })
            .collect::<Vec<_>>()
    };
    metric(
        "nonstop_backup_lag_checkpoints",
        "gauge",
        "Checkpoints a backup has not acknowledged.",
        lag(|e| e.checkpoints),
    );
    metric("nonstop_backup_lag_bytes", "gauge", "Region bytes of those checkpoints.", lag(|e| e.bytes));
    let per_replica = |f: &dyn Fn(&crate::status::ReplicaStatus) -> f64| {
        status.replicas.iter().map(|r| (format!(",service=\"{}\"", label(&r.name)), f(r))).collect::<Vec<_>>()
    };
    metric(
        "nonstop_replica_executed_total",
        "counter",
        "Requests this node's replica of an actively replicated service executed.",
        per_replica(&|r| r.executed as f64),
    );
    metric(
        "nonstop_replica_order_applied_index",
        "gauge",
        "The last log index of the service's order this node's replica applied.",
        per_replica(&|r| r.applied_index as f64),
    );
    metric(
        "nonstop_replica_serving",
        "gauge",
        "1 if this node's replica serves; 0 if it is catching up, proving a state it took, refuted or stopped (its status says why).",
        per_replica(&|r| if r.standing == crate::status::ReplicaStanding::Serving { 1.0 } else { 0.0 }),
    );
    metric(
        "nonstop_replica_order_turned_away_total",
        "counter",
        "Requests of new clients the order refused because it remembered as many clients as it may (65,536), none idle for 10 minutes.",
        per_replica(&|r| r.turned_away as f64),
    );
    metric(
        "nonstop_replica_state_transfers_total",
        "counter",
        "States this node's replica took from another replica after falling behind the order's compacted log.",
        per_replica(&|r| r.state_transfers as f64),
    );
    metric(
        "nonstop_replica_dissents_found_total",
        "counter",
        "Times a majority of replicas' digests of their outcomes contradicted this node's replica (it then took a live replica's state).",
        per_replica(&|r| r.dissents_found as f64),
    );
    metric(
        "nonstop_replica_dissents_reported_total",
        "counter",
        "Times this node's replica saw a majority's digests of their outcomes contradict another replica's.",
        per_replica(&|r| r.dissents_reported as f64),
    );
    let detections = status.detections;
    metric(
        "nonstop_frames_refused_total",
        "counter",
        "Frames refused by a failed check (CRC, MAC, sequence, header); each closed its connection.",
        vec![(String::new(), detections.frames_refused as f64)],
    );
    metric(
        "nonstop_handshakes_refused_total",
        "counter",
        "Handshakes on the control and replication ports that did not end in a session, by reason: \
         authentication (wrong cluster key, or bytes changed on the way), timed_out (not finished \
         within node.handshake_timeout_ms), crowded_out (closed, the oldest pending, to keep the \
         port's bounds).",
        vec![
            (",reason=\"authentication\"".to_string(), detections.handshakes_refused as f64),
            (",reason=\"timed_out\"".to_string(), detections.handshakes_timed_out as f64),
            (",reason=\"crowded_out\"".to_string(), detections.handshakes_crowded_out as f64),
        ],
    );
    metric(
        "nonstop_image_corruptions_total",
        "counter",
        "Times this node's backup image was found corrupted in memory and was forgotten.",
        vec![(String::new(), detections.image_corruptions as f64)],
    );
    let clients = &status.clients;
    metric(
        "nonstop_client_connections",
        "gauge",
        "Client connections open now (at most node.max_clients).",
        vec![(String::new(), clients.open as f64)],
    );
    metric(
        "nonstop_client_connections_closed_total",
        "counter",
        "Client connections the node closed or refused, by reason: full (node.max_clients were \
         open), idle (nothing sent for node.client_idle_timeout_ms), slow (a message not finished, \
         or a reply not read, within node.client_message_timeout_ms).",
        vec![
            (",reason=\"full\"".to_string(), clients.refused_full as f64),
            (",reason=\"idle\"".to_string(), clients.closed_idle as f64),
            (",reason=\"slow\"".to_string(), clients.closed_slow as f64),
        ],
    );
    out
}

/// Scrapes served at once; more connections are closed unanswered.
const MAX_SCRAPES: usize = 8;

/// A scrape's whole request must arrive within this, however slowly its bytes come.
const REQUEST_DEADLINE: Duration = Duration::from_secs(2);

/// The longest request read (a Prometheus scrape's is a few hundred bytes).
const MAX_REQUEST: usize = 8 << 10;

/// Serves `GET /metrics` on `listener` until the process ends. Anyone who reaches the address
/// may connect, so a connection costs a thread for at most [`REQUEST_DEADLINE`], and at most
/// [`MAX_SCRAPES`] at once.
pub fn serve(listener: TcpListener, status: Arc<RwLock<NodeStatus>>) {
    let serving = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let Ok(stream) = stream else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        if serving.fetch_add(1, Ordering::SeqCst) >= MAX_SCRAPES {
            serving.fetch_sub(1, Ordering::SeqCst);
            continue;
        }
        let (status, done) = (status.clone(), serving.clone());
        let spawned = std::thread::Builder::new().name("nonstop-metrics".into()).spawn(move || {
            let _ = answer(stream, &status);
            done.fetch_sub(1, Ordering::SeqCst);
        });
        if spawned.is_err() {
            serving.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Reads a request's head (up to the blank line) by `deadline`, at most [`MAX_REQUEST`] bytes.
fn read_head(stream: &mut TcpStream, deadline: Instant) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || head.len() >= MAX_REQUEST {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    Ok(head)
}

fn answer(mut stream: TcpStream, status: &RwLock<NodeStatus>) -> std::io::Result<()> {
    let head = read_head(&mut stream, Instant::now() + REQUEST_DEADLINE)?;
    stream.set_write_timeout(Some(REQUEST_DEADLINE))?;
    let request_line = String::from_utf8_lossy(head.split(|b| *b == b'\n').next().unwrap_or_default());
    if request_line.starts_with("GET /metrics ") {
        let body = render(&status.read().unwrap_or_else(|p| p.into_inner()));
        write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    } else {
        let body = "try GET /metrics\n";
        write!(stream, "HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
    }
}

/// Starts serving metrics on `addr`.
pub fn start(addr: SocketAddr, status: Arc<RwLock<NodeStatus>>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new().name("nonstop-metrics-accept".into()).spawn(move || serve(listener, status))?;
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(addr: SocketAddr) -> std::io::Result<String> {
        let mut stream = TcpStream::connect(addr)?;
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut text = String::new();
        stream.read_to_string(&mut text)?;
        Ok(text)
    }

    #[test]
    fn slow_scrapers_are_cut_off_and_bounded_in_number() {
        let status = Arc::new(RwLock::new(NodeStatus { node: 4, ..Default::default() }));
        let addr = start("127.0.0.1:0".parse().unwrap(), status).unwrap();
        assert!(get(addr).unwrap().contains("nonstop_raft_term{node=\"4\"}"));
        // Trickling scrapers, one byte every 300 ms, as many as the bound allows and more.
        let mut slow: Vec<TcpStream> = (0..MAX_SCRAPES + 4).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let started = Instant::now();
        let mut cut_off = 0;
        while started.elapsed() < Duration::from_secs(6) && cut_off < slow.len() {
            std::thread::sleep(Duration::from_millis(300));
            cut_off = slow.iter_mut().map(|s| s.write_all(b"G").is_err()).filter(|failed| *failed).count();
        }
        assert_eq!(cut_off, slow.len(), "every trickling scraper is closed within the deadline");
        assert!(get(addr).unwrap().contains("200 OK"), "the endpoint serves again");
    }
}
