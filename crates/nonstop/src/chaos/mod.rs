//! Fault tests on a running cluster: `nonstop chaos kill` (processes on loopback) and
//! `nonstop chaos --netns KIND` (hosts of their own, with network faults, and error injection
//! with `--netns bitflip`).

pub mod inject;
mod kill;
pub mod netns;
pub mod soak;

pub use kill::{ChaosConfig, ChaosReport, DoubleKill, Trial, run_kill};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Percentiles in ms.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Millis {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Worst.
    pub max: f64,
}

/// Percentiles of `values` (ms).
pub fn millis(values: &[f64]) -> Millis {
    let mut histogram = Histogram::<u64>::new(3).expect("valid precision");
    for value in values {
        let _ = histogram.record((value * 1000.0).max(1.0) as u64);
    }
    if values.is_empty() {
        return Millis::default();
    }
    let at = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    Millis { p50: at(0.5), p99: at(0.99), max: histogram.max() as f64 / 1000.0 }
}
