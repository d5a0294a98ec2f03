//! The `load` subcommand of a node binary: requests drawn by the service's own
//! [`Service::sample`](crate::Service::sample), for fault tests.
//!
//! The harness does not know a third party's request types, so the load runs inside the node
//! binary, which does: `BINARY load --config node.toml --service NAME` (every node binary built
//! on [`crate::node::main`] has it, and so has `nonstop`). It prints one line per answer on
//! stdout and stops when its stdin closes:
//!
//! ```text
//! ack CLIENT REQUEST TERM      a request answered (applied now, or a retry answered)
//! refused CLIENT REQUEST       the service refused it (nothing applied; the number is used again)
//! unknown CLIENT REQUEST       no answer before the client's deadline
//! last CLIENT REQUEST          at the end: the client's last acknowledged request
//! ```
//!
//! Each line is a [`LoadLine`]. The test bed judges them with nothing of the service: every
//! acknowledged request number of a client must be at most the last one the client table
//! remembers (else an acknowledged request was lost), and the table's count of requests applied
//! must equal that number (else one was applied twice), besides the platform's and the
//! service's own checks.

use crate::Registry;
use anyhow::bail;
use nonstop_client::{Client, ClientError};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::fmt;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// One line of the `load` subcommand's output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadLine {
    /// A request answered (applied now, or a retry answered), in term `term`.
    Ack {
        /// The client.
        client: u64,
        /// Its request number.
        request: u64,
        /// The term of the primary that answered.
        term: u64,
    },
    /// The service refused the request: nothing applied, the number is used again.
    Refused {
        /// The client.
        client: u64,
        /// Its request number.
        request: u64,
    },
    /// No answer before the client's deadline: the request may or may not have been applied.
    Unknown {
        /// The client.
        client: u64,
        /// Its request number.
        request: u64,
    },
    /// At the end: the client's last acknowledged request (0: none).
    Last {
        /// The client.
        client: u64,
        /// Its last acknowledged request number.
        request: u64,
    },
}

impl fmt::Display for LoadLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadLine::Ack { client, request, term } => write!(f, "ack {client} {request} {term}"),
            LoadLine::Refused { client, request } => write!(f, "refused {client} {request}"),
            LoadLine::Unknown { client, request } => write!(f, "unknown {client} {request}"),
            LoadLine::Last { client, request } => write!(f, "last {client} {request}"),
        }
    }
}

/// A line that is not a [`LoadLine`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a load line: {0:?}")]
pub struct NotALoadLine(pub String);

impl FromStr for LoadLine {
    type Err = NotALoadLine;

    fn from_str(line: &str) -> Result<LoadLine, NotALoadLine> {
        let bad = || NotALoadLine(line.to_string());
        let mut words = line.split_whitespace();
        let verb = words.next().ok_or_else(bad)?;
        let numbers: Vec<u64> = words.map(|w| w.parse().map_err(|_| bad())).collect::<Result<_, _>>()?;
        match (verb, numbers.as_slice()) {
            ("ack", &[client, request, term]) => Ok(LoadLine::Ack { client, request, term }),
            ("refused", &[client, request]) => Ok(LoadLine::Refused { client, request }),
            ("unknown", &[client, request]) => Ok(LoadLine::Unknown { client, request }),
            ("last", &[client, request]) => Ok(LoadLine::Last { client, request }),
            _ => Err(bad()),
        }
    }
}

/// What the `load` subcommand is told.
#[derive(Clone, Debug, clap::Args)]
pub struct LoadArgs {
    /// A node's config: the cluster's client addresses and the service's kind and settings.
    #[arg(long)]
    pub config: PathBuf,
    /// The service to load.
    #[arg(long)]
    pub service: String,
    /// Client threads.
    #[arg(long, default_value_t = 4)]
    pub clients: u64,
    /// The first client's id.
    #[arg(long, default_value_t = 1)]
    pub first_client: u64,
    /// Seed of the requests drawn.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// Runs the load `args` describes until stdin closes (the `load` subcommand of a node binary).
pub fn run(args: &LoadArgs, registry: &Registry) -> anyhow::Result<()> {
    let config = nonstop_node::config::NodeConfig::load(&args.config)?;
    let services = config.services(registry)?;
    let Some(kind) = services.kind(&args.service) else {
        bail!("the config at {} has no service {:?}", args.config.display(), args.service)
    };
    if services.sample(&args.service, args.first_client, 0).is_none() {
        bail!("kind {kind:?} draws no sample requests (Service::sample): it needs a load of its own");
    }
    let services = Arc::new(services);
    let nodes: Vec<SocketAddr> = config.members.iter().filter(|m| !m.witness).map(|m| m.client).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let clients: Vec<JoinHandle<()>> = (args.first_client..args.first_client + args.clients)
        .map(|id| {
            let (services, nodes, stop, out, service) =
                (services.clone(), nodes.clone(), stop.clone(), out.clone(), args.service.clone());
            let seed = args.seed ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            std::thread::spawn(move || {
                let mut rng = SmallRng::seed_from_u64(seed);
                let mut client = Client::new(nodes, id);
                let mut last = 0;
                while !stop.load(Ordering::Relaxed) {
                    let request = client.next_request(&service);
                    let body = services.sample(&service, id, rng.random()).expect("checked above");
                    let line = match client.call_bytes(&service, body) {
                        Ok(answer) => {
                            last = answer.request;
                            LoadLine::Ack { client: id, request: answer.request, term: answer.term }
                        }
                        Err(ClientError::Rejected { .. }) => LoadLine::Refused { client: id, request },
                        Err(_) => LoadLine::Unknown { client: id, request },
                    };
                    let _ = writeln!(out.lock().unwrap_or_else(|p| p.into_inner()), "{line}");
                }
                let line = LoadLine::Last { client: id, request: last };
                let _ = writeln!(out.lock().unwrap_or_else(|p| p.into_inner()), "{line}");
            })
        })
        .collect();
    // The harness closes stdin to stop the load.
    let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        let _ = client.join();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_lines_read_back_as_written() {
        let lines = [
            LoadLine::Ack { client: 3, request: 17, term: 2 },
            LoadLine::Refused { client: 1, request: 4 },
            LoadLine::Unknown { client: 9, request: 1 },
            LoadLine::Last { client: 3, request: 17 },
        ];
        for line in lines {
            assert_eq!(line.to_string().parse::<LoadLine>(), Ok(line));
        }
        for bad in ["", "ack 1 2", "ack 1 2 x", "last 1 2 3", "hello 1 2"] {
            assert!(bad.parse::<LoadLine>().is_err(), "{bad:?}");
        }
    }
}
