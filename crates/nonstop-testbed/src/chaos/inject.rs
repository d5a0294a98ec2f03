//! Error injection in the manner of Iyer's dependability evaluation (replication lectures): flip bits where a real
//! fault would — in frames on the wire, in the primary's region, in a backup's image — and count
//! what became of each error.
//!
//! * **injected**: bits flipped (by a fault proxy on a replication link, or written into a
//!   node's memory through `/proc/<pid>/mem`, bypassing every API, as a failing DIMM would).
//! * **activated**: errors something consumed: a check that caught it, or a client or node that
//!   it reached. An error never activated was discarded unread (a flip in bytes of a connection
//!   already refused, or in an image replaced by a whole one) or was still latent when the trial
//!   gave up waiting.
//! * **detected**: caught by a check: a frame's CRC or MAC, a handshake, a backup image's line
//!   seals (the backup forgets the image and is sent a whole one), the primary's line seals
//!   (the node stops with [`nonstop_node::EXIT_CORRUPT_MEMORY`] and a backup takes over).
//! * **manifested**: a wrong answer or a crash: a node that died any other way, or a history
//!   violation other than lost or doubled updates.
//! * **catastrophic**: acknowledged data lost or corrupted: updates lost or applied twice, or
//!   the final consistency check failing.

use crate::cluster::{ClusterSpec, LocalCluster};
use nonstop_node::EXIT_CORRUPT_MEMORY;
use nonstop_node::status::NodeStatus;
use rand::Rng;
use rand::rngs::SmallRng;
use serde::Serialize;
use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

/// Where a bit is flipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Site {
    /// A frame between primary and backup (either direction), through the fault proxy.
    Wire,
    /// The primary's region, in its memory.
    PrimaryMemory,
    /// A backup's image, in its memory.
    BackupMemory,
    /// An active replica's region, in its memory.
    ReplicaMemory,
    /// An active replica's reply (the `replica-wrong-outcome` fault point).
    ReplicaOutput,
}

impl Site {
    /// The site's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Site::Wire => "wire",
            Site::PrimaryMemory => "primary-memory",
            Site::BackupMemory => "backup-memory",
            Site::ReplicaMemory => "replica-memory",
            Site::ReplicaOutput => "replica-output",
        }
    }
}

/// Iyer's counts for one site.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct InjectionCounts {
    /// Bits flipped.
    pub injected: u64,
    /// Errors something consumed (detected, or manifested undetected).
    pub activated: u64,
    /// Errors a check caught.
    pub detected: u64,
    /// Wrong answers or crashes.
    pub manifested: u64,
    /// Acknowledged data lost or corrupted.
    pub catastrophic: u64,
}

impl std::ops::AddAssign for InjectionCounts {
    fn add_assign(&mut self, other: InjectionCounts) {
        self.injected += other.injected;
        self.activated += other.activated;
        self.detected += other.detected;
        self.manifested += other.manifested;
        self.catastrophic += other.catastrophic;
    }
}

impl std::iter::Sum for InjectionCounts {
    fn sum<I: Iterator<Item = InjectionCounts>>(counts: I) -> InjectionCounts {
        counts.fold(InjectionCounts::default(), |mut sum, counts| {
            sum += counts;
            sum
        })
    }
}

/// What one trial's injection did, as the harness saw it.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Injection {
    /// Where.
    pub site: Site,
    /// Bits flipped.
    pub injected: u64,
    /// Errors caught by a check.
    pub detected: u64,
    /// Nodes that died other than by the fail-stop of a detection.
    pub crashed: u64,
    /// Milliseconds from the flip to its detection (memory sites).
    pub detected_after_ms: Option<f64>,
}

/// Adds up the trials' injections per site. Wrong answers and lost updates are judged by the
/// history checker over the whole run and cannot be pinned on one trial: [`with_history`] adds
/// them as a `total` row.
pub fn tally(injections: &[Injection]) -> BTreeMap<Site, InjectionCounts> {
    let mut sites: BTreeMap<Site, InjectionCounts> = BTreeMap::new();
    for injection in injections {
        let counts = sites.entry(injection.site).or_default();
        counts.injected += injection.injected;
        counts.detected += injection.detected.min(injection.injected);
        counts.manifested += injection.crashed;
        counts.activated += injection.detected.min(injection.injected) + injection.crashed;
    }
    sites
}

/// The per-site rows plus a `total` row that also counts what the history checker and the final
/// consistency check found: violations other than lost or doubled updates are manifested, lost
/// or doubled updates and a failed check are catastrophic.
pub fn with_history(
    sites: BTreeMap<Site, InjectionCounts>,
    violations: &crate::history::Violations,
    check_failed: bool,
) -> BTreeMap<String, InjectionCounts> {
    let mut total: InjectionCounts = sites.values().copied().sum();
    let catastrophic = violations.acked_lost + violations.applied_twice + u64::from(check_failed);
    let wrong = violations.total() - violations.acked_lost - violations.applied_twice;
    total.manifested += wrong + catastrophic;
    total.activated += wrong + catastrophic;
    total.catastrophic = catastrophic;
    let mut rows: BTreeMap<String, InjectionCounts> =
        sites.into_iter().map(|(site, counts)| (site.name().to_string(), counts)).collect();
    rows.insert("total".into(), total);
    rows
}

/// How long a flipped bit in memory may stay unnoticed before the trial calls it latent: more
/// than one scrub pass over the region (25 MiB/s).
pub const DETECTION_LIMIT: Duration = Duration::from_secs(10);

/// Flips one random bit of the service's data in node `target`'s region; false if the node had
/// no process to flip in.
pub fn flip_in_region(
    cluster: &LocalCluster,
    spec: &ClusterSpec,
    target: u64,
    rng: &mut SmallRng,
) -> anyhow::Result<bool> {
    let Some(pid) = cluster.nodes[target as usize - 1].pid() else { return Ok(false) };
    // Flips land where the service's data lives (accounts, tellers, branches, history, client
    // slots): flips in never-written space are found by the scrubber alone, and are easy.
    // A kind of another binary: anywhere in its region.
    let used = nonstop::builtins()
        .make(&spec.kind, &spec.settings())
        .map_or(spec.region_size_mib << 20, |service| service.region_len() as u64);
    let address = spec.region_base as u64 + rng.random_range(0..used);
    let bit = rng.random_range(0..8u8);
    flip_memory(pid, address, bit).map_err(|e| anyhow::anyhow!("flipping a bit in node {target} (pid {pid}): {e}"))?;
    Ok(true)
}

/// What became of a flip in a node's memory.
pub struct Watched {
    /// What the harness saw of it (`injected` left 0: the caller knows whether it flipped).
    pub injection: Injection,
    /// The node's process ended (it must be started again).
    pub exited: bool,
}

/// Watches node `target` until the flip there is detected — the node stops with
/// [`EXIT_CORRUPT_MEMORY`] (its region's line seals found it), or its status shows `found` (a
/// backup counting a corrupted image, a replica finding itself dissenting) — or it dies some
/// other way (a crash: manifested), or [`DETECTION_LIMIT`] passes (latent).
pub fn watch_flip(
    cluster: &mut LocalCluster,
    target: u64,
    site: Site,
    flipped: Instant,
    found: impl Fn(&NodeStatus) -> bool,
) -> Watched {
    let mut injection = Injection { site, injected: 0, detected: 0, crashed: 0, detected_after_ms: None };
    let after_ms = || Some(flipped.elapsed().as_secs_f64() * 1e3);
    while flipped.elapsed() < DETECTION_LIMIT {
        if let Some(status) = cluster.exited(target) {
            if status.code() == Some(EXIT_CORRUPT_MEMORY) {
                injection.detected = 1;
                injection.detected_after_ms = after_ms();
            } else {
                injection.crashed = 1;
            }
            return Watched { injection, exited: true };
        }
        if cluster.status(target).is_some_and(|status| found(&status)) {
            injection.detected = 1;
            injection.detected_after_ms = after_ms();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Watched { injection, exited: false }
}

/// Flips bit `bit` of the byte at virtual address `address` in process `pid`'s memory, through
/// `/proc/<pid>/mem` (root, or the process's owner with ptrace rights). Returns the byte as it
/// was and as it is now.
pub fn flip_memory(pid: u32, address: u64, bit: u8) -> std::io::Result<(u8, u8)> {
    let mem = std::fs::OpenOptions::new().read(true).write(true).open(format!("/proc/{pid}/mem"))?;
    let mut byte = [0u8; 1];
    mem.read_exact_at(&mut byte, address)?;
    let before = byte[0];
    byte[0] ^= 1 << (bit % 8);
    mem.write_all_at(&byte, address)?;
    Ok((before, byte[0]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flip_through_proc_mem_lands_in_this_process() {
        let value = Box::new(0b1010_0000u8);
        let address = &*value as *const u8 as u64;
        let (before, after) = flip_memory(std::process::id(), address, 0).expect("this process's memory is writable");
        assert_eq!((before, after), (0b1010_0000, 0b1010_0001));
        // SAFETY: reading a byte we own, written behind the compiler's back: volatile.
        assert_eq!(unsafe { std::ptr::read_volatile(&*value) }, 0b1010_0001);
    }

    #[test]
    fn tally_counts_detections_and_crashes() {
        let trial = |site, injected, detected, crashed| Injection {
            site,
            injected,
            detected,
            crashed,
            detected_after_ms: None,
        };
        let sites = tally(&[
            trial(Site::Wire, 3, 2, 0),
            trial(Site::Wire, 1, 5, 0), // more refusals than flips: one flip can end several frames
            trial(Site::PrimaryMemory, 1, 1, 0),
            trial(Site::BackupMemory, 1, 0, 1),
        ]);
        assert_eq!(
            sites[&Site::Wire],
            InjectionCounts { injected: 4, activated: 3, detected: 3, ..Default::default() }
        );
        assert_eq!(sites[&Site::PrimaryMemory].detected, 1);
        assert_eq!(
            sites[&Site::BackupMemory],
            InjectionCounts { injected: 1, activated: 1, manifested: 1, ..Default::default() }
        );
    }
}
