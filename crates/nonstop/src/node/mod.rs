//! A node binary of your own: your service kinds, nonstop's node.
//!
//! ```no_run
//! # use nonstop::{Image, Service, ServiceError, Store, View, Writes};
//! # struct Counter;
//! # impl Service for Counter {
//! #     type Request = u64; type Reply = u64; type Query = (); type Answer = u64;
//! #     const WRITES: Writes = Writes::AtOffsets;
//! #     fn state_len(&self) -> usize { 8 }
//! #     fn execute(&self, _: &mut Store<'_>, by: &u64) -> Result<u64, ServiceError> { Ok(*by) }
//! #     fn query(&self, _: &View<'_>, _: &()) -> Result<u64, ServiceError> { Ok(0) }
//! #     fn check(&self, _: &Image<'_>) -> Result<String, String> { Ok(String::new()) }
//! # }
//! fn main() -> std::process::ExitCode {
//!     let mut registry = nonstop::Registry::new();
//!     registry.register("counter", |_settings| Ok(Counter));
//!     nonstop::node::main(registry) // `BINARY node --config node.toml`, as `nonstop node`
//! }
//! ```
//!
//! The binary takes the same `node --config FILE` arguments as `nonstop node`, so `nonstop
//! status`, `nonstop switchover` and the test bed work with it unchanged; its `load`
//! subcommand drives a service with the requests its kind samples, for `nonstop chaos kill
//! --node-binary`.

use crate::{Registry, Runs};
use std::path::PathBuf;

mod load;

pub use load::{LoadArgs, LoadLine, NotALoadLine, run as run_load};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;

pub use nonstop_node::config::{Checked, ConfigError, NodeConfig};
pub use nonstop_node::{READY, run_config_file, run_node};

#[derive(clap::Parser)]
#[command(about = "A nonstop node running this program's service kinds")]
struct NodeCli {
    #[command(subcommand)]
    command: NodeCommand,
}

#[derive(clap::Subcommand)]
enum NodeCommand {
    /// Run one node of a cluster: its share of the control plane and its services' roles.
    Node {
        /// The node's TOML config.
        #[arg(long)]
        config: PathBuf,
    },
    /// Load a service of the cluster with the requests its kind samples, until stdin closes
    /// (what `nonstop chaos kill --node-binary` runs; see [`LoadLine`]).
    Load(LoadArgs),
    /// List the service kinds this binary runs, one per line: the kind and where it keeps its
    /// state (`offsets` or `collections` in the region, the latter in transparent mode only;
    /// `threads`: in its worker threads' mutexes, active replication only).
    Kinds,
}

/// The `kinds` subcommand's lines.
pub fn kinds(registry: &Registry) -> String {
    registry.kinds().filter_map(|kind| Some(format!("{kind} {}\n", runs_name(registry.runs(kind)?)))).collect()
}

/// A kind's place for its state, as the `kinds` subcommand names it.
fn runs_name(runs: Runs) -> &'static str {
    match runs {
        Runs::InRegion(crate::Writes::AtOffsets) => "offsets",
        Runs::InRegion(crate::Writes::Collections) => "collections",
        Runs::OnThreads => "threads",
    }
}

/// Where a kind of the node binary at `exe` keeps its state, as its `kinds` subcommand says
/// (`None`: the binary does not know the kind, or has no `kinds` subcommand).
pub fn kind_runs(exe: &std::path::Path, kind: &str) -> Option<Runs> {
    let output = std::process::Command::new(exe).arg("kinds").output().ok()?;
    let known = [Runs::InRegion(crate::Writes::AtOffsets), Runs::InRegion(crate::Writes::Collections), Runs::OnThreads];
    String::from_utf8_lossy(&output.stdout).lines().find_map(|line| {
        let (name, runs) = line.split_once(' ')?;
        known.into_iter().find(|known| name == kind && runs_name(*known) == runs)
    })
}

/// Sends logs to stderr, filtered by `RUST_LOG` (else `default`).
pub fn init_logs(default: &str) {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default.into()))
        .init();
}

/// The `main` of a node binary with the kinds of `registry`: parses `node --config FILE`, runs
/// the node until it is killed, and prints a user's mistake (a config it cannot serve) as one
/// line with a failing exit status.
pub fn main(registry: Registry) -> ExitCode {
    let cli = <NodeCli as clap::Parser>::parse();
    init_logs("warn");
    let result = match cli.command {
        NodeCommand::Node { config } => {
            run_config_file(&config, &registry, &AtomicBool::new(false)).map_err(anyhow::Error::from)
        }
        NodeCommand::Load(args) => load::run(&args, &registry),
        NodeCommand::Kinds => {
            print!("{}", kinds(&registry));
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
