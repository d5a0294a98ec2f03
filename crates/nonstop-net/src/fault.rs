//! Fault points for `nonstop chaos kill`: places inside a checkpoint where an armed process
//! kills itself with SIGKILL, as abruptly as an external kill, but at an exact moment.
//!
//! Arming is refused unless the process was started with `NONSTOP_ALLOW_FAULTS=1`, so a
//! production node can never be told to die over the network.

use std::sync::atomic::{AtomicU32, Ordering};

/// Where to die.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FaultPoint {
    /// Primary: after the first runs frame of a checkpoint went out, before the rest.
    AfterSomeRuns = 1,
    /// Primary: after every runs frame of a checkpoint, before its closing frame.
    BeforeClose = 2,
    /// Primary: when a backup's acknowledgement arrives, before it is counted: the backup
    /// applied the checkpoint, the primary never learns it.
    AckArrived = 3,
}

impl FaultPoint {
    /// Every fault point.
    pub const ALL: [FaultPoint; 3] = [FaultPoint::AfterSomeRuns, FaultPoint::BeforeClose, FaultPoint::AckArrived];

    /// The point named `name` ([`FaultPoint::name`]).
    pub fn from_name(name: &str) -> Option<FaultPoint> {
        FaultPoint::ALL.into_iter().find(|p| p.name() == name)
    }

    /// A short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            FaultPoint::AfterSomeRuns => "after-some-runs",
            FaultPoint::BeforeClose => "before-close",
            FaultPoint::AckArrived => "ack-arrived",
        }
    }
}

static ARMED: AtomicU32 = AtomicU32::new(0);
static COUNTDOWN: AtomicU32 = AtomicU32::new(0);

/// Whether this process accepts fault points.
pub fn allowed() -> bool {
    std::env::var_os("NONSTOP_ALLOW_FAULTS").is_some_and(|v| v == "1")
}

/// Arms `point`: the `countdown`-th time it is reached, the process dies.
pub fn arm(point: FaultPoint, countdown: u32) -> Result<(), &'static str> {
    if !allowed() {
        return Err("fault points are off: start the node with NONSTOP_ALLOW_FAULTS=1");
    }
    COUNTDOWN.store(countdown.max(1), Ordering::SeqCst);
    ARMED.store(point as u32, Ordering::SeqCst);
    Ok(())
}

/// True if any point is armed (so hot paths can take their slow, splittable branch).
#[inline]
pub fn armed() -> bool {
    ARMED.load(Ordering::Relaxed) != 0
}

/// Reached `point`: dies here if it is armed and its countdown runs out.
#[inline]
pub fn reached(point: FaultPoint) {
    if ARMED.load(Ordering::Relaxed) == point as u32 && COUNTDOWN.fetch_sub(1, Ordering::SeqCst) == 1 {
        tracing::warn!(point = point.name(), "fault point reached: killing this process");
        // SAFETY: kill(2) with our own pid and SIGKILL has no memory-safety preconditions.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}
