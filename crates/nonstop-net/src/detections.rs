//! What a node's integrity checks caught since it started: frames refused by their CRC or MAC,
//! handshakes refused, and backup images found corrupted in memory by the scrubber.
//!
//! A primary that finds its own region corrupted does not count it: it stops (see
//! `nonstop_region::CorruptionHandler`), and its exit status says why. The error-injection
//! harness reads these counts through the node's status to tell a detected error from a silent
//! one; the metrics endpoint exports them.

use std::sync::atomic::{AtomicU64, Ordering};

/// The counters of one node: every connection and backup server it runs adds to them (each
/// is handed the node's instance; nothing is process-wide).
#[derive(Debug, Default)]
pub struct Detections {
    frames_refused: AtomicU64,
    handshakes_refused: AtomicU64,
    handshakes_timed_out: AtomicU64,
    handshakes_crowded_out: AtomicU64,
    image_corruptions: AtomicU64,
}

/// A snapshot of a node's [`Detections`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DetectionCounts {
    /// Frames refused because a check failed (CRC, MAC, sequence, header): the connection was
    /// closed and nothing of the frame was used.
    pub frames_refused: u64,
    /// Handshakes refused (the peer could not prove it holds the cluster key, or bytes changed).
    pub handshakes_refused: u64,
    /// Times a backup's scrubber found its image corrupted and forgot it.
    pub image_corruptions: u64,
    /// Handshakes not finished within their deadline (an idle or trickling connection). Not an
    /// integrity detection: counted apart from the others, out of [`DetectionCounts::total`].
    #[serde(default)]
    pub handshakes_timed_out: u64,
    /// Pending handshakes closed to keep a port's bounds (the oldest of a source, or of all).
    #[serde(default)]
    pub handshakes_crowded_out: u64,
}

impl DetectionCounts {
    /// Everything detected.
    pub fn total(&self) -> u64 {
        self.frames_refused + self.handshakes_refused + self.image_corruptions
    }

    /// What was detected between `earlier` and this snapshot (counters of a restarted process
    /// start again from zero, so a smaller value counts from zero).
    pub fn since(&self, earlier: &DetectionCounts) -> DetectionCounts {
        let delta = |now: u64, then: u64| if now >= then { now - then } else { now };
        DetectionCounts {
            frames_refused: delta(self.frames_refused, earlier.frames_refused),
            handshakes_refused: delta(self.handshakes_refused, earlier.handshakes_refused),
            image_corruptions: delta(self.image_corruptions, earlier.image_corruptions),
            handshakes_timed_out: delta(self.handshakes_timed_out, earlier.handshakes_timed_out),
            handshakes_crowded_out: delta(self.handshakes_crowded_out, earlier.handshakes_crowded_out),
        }
    }
}

impl Detections {
    /// The counts now.
    pub fn snapshot(&self) -> DetectionCounts {
        DetectionCounts {
            frames_refused: self.frames_refused.load(Ordering::Relaxed),
            handshakes_refused: self.handshakes_refused.load(Ordering::Relaxed),
            image_corruptions: self.image_corruptions.load(Ordering::Relaxed),
            handshakes_timed_out: self.handshakes_timed_out.load(Ordering::Relaxed),
            handshakes_crowded_out: self.handshakes_crowded_out.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn frame_refused(&self) {
        self.frames_refused.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn handshake_refused(&self) {
        self.handshakes_refused.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn handshake_timed_out(&self) {
        self.handshakes_timed_out.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn handshake_crowded_out(&self) {
        self.handshakes_crowded_out.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn image_corrupted(&self) {
        self.image_corruptions.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_survives_a_restart() {
        let before = DetectionCounts { frames_refused: 5, handshakes_refused: 1, ..DetectionCounts::default() };
        let after = DetectionCounts { frames_refused: 7, image_corruptions: 1, ..DetectionCounts::default() };
        let delta = after.since(&before);
        assert_eq!(delta, DetectionCounts { frames_refused: 2, image_corruptions: 1, ..DetectionCounts::default() });
        assert_eq!(delta.total(), 3);
    }
}
