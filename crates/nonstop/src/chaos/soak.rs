//! Soak figures: every node process's resident memory, open file descriptors and threads,
//! sampled from `/proc` while a long chaos run goes on, and summarised per process so that a
//! leak shows as growth between a process's warm-up and its end.

use serde::Serialize;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// One look at one process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ProcessSample {
    /// Seconds since the soak began.
    pub at_s: u64,
    /// Resident memory in KiB (`VmRSS`).
    pub rss_kib: u64,
    /// Threads (`Threads`).
    pub threads: u64,
    /// Open file descriptors (entries of `/proc/<pid>/fd`).
    pub fds: u64,
}

/// Reads a process's sample; `None` if it is gone.
pub fn sample_process(pid: u32, at_s: u64) -> Option<ProcessSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|value| value.parse::<u64>().ok())
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some(ProcessSample { at_s, rss_kib: field("VmRSS:")?, threads: field("Threads:")?, fds })
}

/// One node process's life in the soak, summarised.
#[derive(Clone, Debug, Serialize)]
pub struct ProcessSummary {
    /// The node.
    pub node: u64,
    /// The process (a node killed and restarted is a new one).
    pub pid: u32,
    /// Seconds it was watched.
    pub watched_s: u64,
    /// Its first sample after warm-up, its last one, and the largest value of each figure.
    pub first: ProcessSample,
    /// The last sample.
    pub last: ProcessSample,
    /// Largest resident memory seen (KiB).
    pub max_rss_kib: u64,
    /// Most file descriptors seen.
    pub max_fds: u64,
    /// Most threads seen.
    pub max_threads: u64,
}

/// The soak's figures.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SoakReport {
    /// How long the soak ran.
    pub duration_s: u64,
    /// Samples taken.
    pub samples: u64,
    /// Per process, in the order first seen.
    pub processes: Vec<ProcessSummary>,
    /// Processes watched for at least [`SoakSampler::LONG`] whose resident memory grew by more
    /// than a tenth, or whose descriptors or threads grew at all, between their first and
    /// last samples (both taken with load running).
    pub growing: Vec<String>,
}

/// Samples node processes and keeps each one's series.
#[derive(Debug)]
pub struct SoakSampler {
    started: Instant,
    warm_up: Duration,
    series: BTreeMap<(u64, u32), Vec<ProcessSample>>,
    order: Vec<(u64, u32)>,
    samples: u64,
}

impl SoakSampler {
    /// A process watched at least this long is judged for growth.
    pub const LONG: Duration = Duration::from_secs(120);

    /// A sampler whose clock starts now; samples of a process younger than `warm_up` (by this
    /// sampler's first sight of it) are not its baseline.
    pub fn new(warm_up: Duration) -> SoakSampler {
        SoakSampler { started: Instant::now(), warm_up, series: BTreeMap::new(), order: Vec::new(), samples: 0 }
    }

    /// Samples every `(node, pid)`.
    pub fn sample(&mut self, processes: &[(u64, u32)]) {
        let at_s = self.started.elapsed().as_secs();
        for &(node, pid) in processes {
            if let Some(sample) = sample_process(pid, at_s) {
                if !self.series.contains_key(&(node, pid)) {
                    self.order.push((node, pid));
                }
                self.series.entry((node, pid)).or_default().push(sample);
                self.samples += 1;
            }
        }
    }

    /// The figures.
    pub fn report(&self) -> SoakReport {
        let mut report =
            SoakReport { duration_s: self.started.elapsed().as_secs(), samples: self.samples, ..SoakReport::default() };
        for key in &self.order {
            let series = &self.series[key];
            let born = series[0].at_s;
            let baseline = series.iter().find(|s| s.at_s >= born + self.warm_up.as_secs()).unwrap_or(&series[0]);
            let last = *series.last().expect("a series has a sample");
            let summary = ProcessSummary {
                node: key.0,
                pid: key.1,
                watched_s: last.at_s - born,
                first: *baseline,
                last,
                max_rss_kib: series.iter().map(|s| s.rss_kib).max().unwrap_or(0),
                max_fds: series.iter().map(|s| s.fds).max().unwrap_or(0),
                max_threads: series.iter().map(|s| s.threads).max().unwrap_or(0),
            };
            if last.at_s - baseline.at_s >= Self::LONG.as_secs() {
                let mut grew = Vec::new();
                if last.rss_kib > baseline.rss_kib + baseline.rss_kib / 10 {
                    grew.push(format!("rss {} -> {} KiB", baseline.rss_kib, last.rss_kib));
                }
                if last.fds > baseline.fds {
                    grew.push(format!("fds {} -> {}", baseline.fds, last.fds));
                }
                if last.threads > baseline.threads {
                    grew.push(format!("threads {} -> {}", baseline.threads, last.threads));
                }
                if !grew.is_empty() {
                    report.growing.push(format!("node {} (pid {}): {}", key.0, key.1, grew.join(", ")));
                }
            }
            report.processes.push(summary);
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_can_be_sampled() {
        let sample = sample_process(std::process::id(), 0).expect("this process exists");
        assert!(sample.rss_kib > 0 && sample.threads >= 1 && sample.fds >= 3, "{sample:?}");
        assert_eq!(sample_process(u32::MAX, 0), None, "no such process");
    }

    #[test]
    fn growth_is_flagged_only_for_long_watched_processes() {
        let mut sampler = SoakSampler::new(Duration::ZERO);
        let sample = |at_s, rss_kib, fds| ProcessSample { at_s, rss_kib, threads: 10, fds };
        sampler.series.insert((1, 10), vec![sample(0, 1000, 20), sample(200, 1050, 20)]);
        sampler.series.insert((2, 20), vec![sample(0, 1000, 20), sample(200, 2000, 25)]);
        sampler.series.insert((3, 30), vec![sample(0, 1000, 20), sample(10, 2000, 25)]);
        sampler.order = vec![(1, 10), (2, 20), (3, 30)];
        let report = sampler.report();
        assert_eq!(report.growing, vec!["node 2 (pid 20): rss 1000 -> 2000 KiB, fds 20 -> 25".to_string()]);
        assert_eq!(report.processes.len(), 3);
    }
}
