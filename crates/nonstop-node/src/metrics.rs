//! Prometheus metrics: the node's status in the text exposition format, served on
//! `GET /metrics` at the address `[node] metrics` names.

use crate::agent::NodeStatus;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Escapes a label value (backslash, double quote, newline).
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The status as Prometheus text.
///
/// ```
/// use nonstop_node::agent::NodeStatus;
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
    let per_service = |f: &dyn Fn(&crate::agent::ServiceStatus) -> Option<f64>| {
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
    let lag = |pick: fn(&crate::agent::BackupLagStatus) -> u64| {
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

/// Serves `GET /metrics` on `listener` until the process ends.
pub fn serve(listener: TcpListener, status: Arc<RwLock<NodeStatus>>) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let status = status.clone();
        let _ = std::thread::Builder::new().name("nonstop-metrics".into()).spawn(move || {
            let _ = answer(stream, &status);
        });
    }
}

fn answer(stream: TcpStream, status: &RwLock<NodeStatus>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Read the headers off; the request has no body we care about.
    let mut header = String::new();
    while reader.read_line(&mut header)? > 2 {
        header.clear();
    }
    let mut stream = stream;
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
