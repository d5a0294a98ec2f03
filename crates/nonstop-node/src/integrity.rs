//! How a node guards its copy of a region against memory corruption: a primary's region is
//! scrubbed in the background and checked line by line on every transactional access
//! ([`nonstop_region::Mirror`]); when a line no longer matches its seal, the node stops at once
//! ([`fail_stop`]) rather than serve, replicate or acknowledge anything from it, and a backup
//! holding a verified image takes over. (A backup's image is scrubbed by its server between
//! frames; a corrupted image is forgotten and sent again whole.)

use nonstop_proto::integrity::{CorruptLine, SCRUB_LINES_PER_TICK, SCRUB_TICK};
use nonstop_region::Mirror;
use std::sync::Arc;

/// The exit status of a node that stopped because its region was corrupted in memory
/// (`EX_SOFTWARE`): a supervisor restarts it, and it comes back as a spare.
pub const EXIT_CORRUPT_MEMORY: i32 = 70;

/// The node's [`nonstop_region::CorruptionHandler`]: log, then exit with
/// [`EXIT_CORRUPT_MEMORY`]. Exiting ends every connection, so the control plane fails the
/// node's passive services over, the other replicas of its active services answer without
/// it, and no client hears anything more from this copy.
pub fn fail_stop(corruption: CorruptLine) -> ! {
    tracing::error!(
        %corruption,
        "stopping this node: its copy of a region is corrupt; a backup holding a verified image takes over, or \
         the other replicas answer"
    );
    eprintln!("nonstop node: {corruption}: stopping (exit status {EXIT_CORRUPT_MEMORY})");
    std::process::exit(EXIT_CORRUPT_MEMORY)
}

/// Scrubs `mirror` a slice every [`SCRUB_TICK`] for as long as anyone else holds it; the
/// thread holds the mirror only while it scrubs a slice, so a deposed primary's region is
/// released as soon as its users let go.
pub fn start_scrubber(service: &str, mirror: &Arc<Mirror>) {
    let weak = Arc::downgrade(mirror);
    std::thread::Builder::new()
        .name(format!("nonstop-scrub-{service}"))
        .spawn(move || {
            loop {
                std::thread::sleep(SCRUB_TICK);
                let Some(mirror) = weak.upgrade() else { return };
                mirror.scrub(SCRUB_LINES_PER_TICK);
            }
        })
        .expect("spawn scrubber thread");
}
