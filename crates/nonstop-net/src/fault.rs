//! Fault points for chaos runs and tests: places inside a checkpoint where an armed process
//! kills itself with SIGKILL, as abruptly as an external kill, but at an exact moment; and one
//! where an active replica answers a request wrongly, as a fault that struck only its process
//! would make it.
//!
//! Arming is refused unless the node's config enables it ([`FaultPoints::enabled`]), so a
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
    /// Active replica: when it has executed a request, its outcome (what it answers, and
    /// digests) is changed, a bit of the reply flipped; the process lives on.
    ReplicaWrongOutcome = 4,
    /// Active replica of a multithreaded service: before it executes the next entry of the
    /// order, one bit of its service's state is flipped (behind its scheduler, as a fault of
    /// its memory would); the process lives on.
    ReplicaFlipState = 5,
}

impl FaultPoint {
    /// Every fault point.
    pub const ALL: [FaultPoint; 5] = [
        FaultPoint::AfterSomeRuns,
        FaultPoint::BeforeClose,
        FaultPoint::AckArrived,
        FaultPoint::ReplicaWrongOutcome,
        FaultPoint::ReplicaFlipState,
    ];

    /// The points that kill the process (inside a checkpoint of a passive service's primary).
    pub const KILLS: [FaultPoint; 3] = [FaultPoint::AfterSomeRuns, FaultPoint::BeforeClose, FaultPoint::AckArrived];

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
            FaultPoint::ReplicaWrongOutcome => "replica-wrong-outcome",
            FaultPoint::ReplicaFlipState => "replica-flip-state",
        }
    }
}

/// One node's fault points: off unless its config enables them (`[node] fault_points =
/// true`), so that a production node can never be told to die over the network. Each node
/// process holds its own; the primaries it starts check it on their hot paths.
#[derive(Debug, Default)]
pub struct FaultPoints {
    enabled: bool,
    armed: AtomicU32,
    countdown: AtomicU32,
}

impl FaultPoints {
    /// Fault points that refuse to be armed.
    pub fn disabled() -> FaultPoints {
        FaultPoints::default()
    }

    /// Fault points that may be armed (chaos runs).
    pub fn enabled() -> FaultPoints {
        FaultPoints { enabled: true, ..FaultPoints::default() }
    }

    /// Whether arming is allowed.
    pub fn allowed(&self) -> bool {
        self.enabled
    }

    /// Arms `point`: the `countdown`-th time it is reached, the process dies.
    pub fn arm(&self, point: FaultPoint, countdown: u32) -> Result<(), &'static str> {
        if !self.enabled {
            return Err(
                "fault points are off: set fault_points = true in the node's [node] section (test clusters only)",
            );
        }
        self.countdown.store(countdown.max(1), Ordering::SeqCst);
        self.armed.store(point as u32, Ordering::SeqCst);
        Ok(())
    }

    /// True if any point is armed (so hot paths can take their slow, splittable branch).
    #[inline]
    pub fn armed(&self) -> bool {
        self.armed.load(Ordering::Relaxed) != 0
    }

    /// Reached `point`: true (once) if it is armed and its countdown runs out; the caller
    /// injects the fault.
    #[inline]
    pub fn fires(&self, point: FaultPoint) -> bool {
        self.armed.load(Ordering::Relaxed) == point as u32
            && self.countdown.fetch_sub(1, Ordering::SeqCst) == 1
            && self.armed.compare_exchange(point as u32, 0, Ordering::SeqCst, Ordering::SeqCst).is_ok()
    }

    /// Reached `point`: dies here if it is armed and its countdown runs out.
    #[inline]
    pub fn reached(&self, point: FaultPoint) {
        if self.fires(point) {
            tracing::warn!(point = point.name(), "fault point reached: killing this process");
            // SAFETY: kill(2) with our own pid and SIGKILL has no memory-safety preconditions.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_points_are_armed_only_where_the_config_enables_them() {
        let off = FaultPoints::disabled();
        assert!(off.arm(FaultPoint::BeforeClose, 1).unwrap_err().contains("fault_points = true"));
        assert!(!off.armed());
        let on = FaultPoints::enabled();
        on.arm(FaultPoint::BeforeClose, 3).unwrap();
        assert!(on.armed() && !off.armed(), "each node has its own");
        on.reached(FaultPoint::AckArrived);
        on.reached(FaultPoint::BeforeClose);
        on.reached(FaultPoint::BeforeClose);
        assert_eq!(on.countdown.load(Ordering::SeqCst), 1, "the third reach would kill");
        on.arm(FaultPoint::ReplicaWrongOutcome, 2).unwrap();
        assert!(!on.fires(FaultPoint::ReplicaWrongOutcome));
        assert!(on.fires(FaultPoint::ReplicaWrongOutcome), "the second reach fires");
        assert!(!on.fires(FaultPoint::ReplicaWrongOutcome) && !on.armed(), "once");
    }
}
