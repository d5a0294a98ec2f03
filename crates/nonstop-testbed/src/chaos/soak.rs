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
    /// Its first sample after warm-up (its baseline).
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
    /// Every sample, per process in the same order (for charts and a closer look).
    pub series: Vec<Vec<ProcessSample>>,
    /// Processes watched for at least [`SoakSampler::LONG`] whose peak resident memory in the
    /// second half of their watched life exceeds the first half's by more than a tenth, or
    /// whose peak descriptors or threads exceed it at all (see `growth`).
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
                let watched: Vec<&ProcessSample> = series.iter().filter(|s| s.at_s >= baseline.at_s).collect();
                let grew = growth(&watched);
                if !grew.is_empty() {
                    report.growing.push(format!("node {} (pid {}): {}", key.0, key.1, grew.join(", ")));
                }
            }
            report.processes.push(summary);
            report.series.push(series.clone());
        }
        report
    }
}

impl SoakReport {
    /// Resident memory of every process watched at least a minute, over the soak, as SVG.
    pub fn rss_chart(&self, title: &str) -> String {
        let lines: Vec<(String, Vec<(f64, f64)>)> = self
            .processes
            .iter()
            .zip(&self.series)
            .filter(|(process, _)| process.watched_s >= 60)
            .map(|(process, series)| {
                let points = series.iter().map(|s| (s.at_s as f64, s.rss_kib as f64 / 1024.0)).collect();
                (format!("node {} (pid {})", process.node, process.pid), points)
            })
            .collect();
        crate::chart::lines(title, "seconds", "resident memory (MiB)", &lines)
    }
}

/// What grew between the first and the second half of a process's watched life. Peaks, not
/// single samples, are compared: a node's figures move with its role (a primary has more
/// connections and threads than a backup, and its allocator keeps what a burst needed), so a
/// leak shows as the second half's peak above the first half's, not as a difference between
/// two moments that may find the node in different roles.
fn growth(samples: &[&ProcessSample]) -> Vec<String> {
    let (first, second) = samples.split_at(samples.len() / 2);
    let peak =
        |half: &[&ProcessSample], figure: fn(&ProcessSample) -> u64| half.iter().map(|s| figure(s)).max().unwrap_or(0);
    let mut grew = Vec::new();
    let (rss_before, rss_after) = (peak(first, |s| s.rss_kib), peak(second, |s| s.rss_kib));
    if rss_after > rss_before + rss_before / 10 {
        grew.push(format!("peak rss {rss_before} -> {rss_after} KiB"));
    }
    let (fds_before, fds_after) = (peak(first, |s| s.fds), peak(second, |s| s.fds));
    if fds_after > fds_before {
        grew.push(format!("peak fds {fds_before} -> {fds_after}"));
    }
    let (threads_before, threads_after) = (peak(first, |s| s.threads), peak(second, |s| s.threads));
    if threads_after > threads_before {
        grew.push(format!("peak threads {threads_before} -> {threads_after}"));
    }
    grew
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
        // Steady, with a role change (more fds) in each half: not growth.
        let steady = vec![sample(0, 1000, 20), sample(50, 1050, 37), sample(100, 1000, 20), sample(200, 1040, 37)];
        sampler.series.insert((1, 10), steady);
        // A leak: the second half peaks above the first.
        let leaking = vec![sample(0, 1000, 20), sample(50, 1100, 20), sample(150, 1500, 22), sample(200, 2000, 25)];
        sampler.series.insert((2, 20), leaking);
        // Watched too briefly to judge.
        sampler.series.insert((3, 30), vec![sample(0, 1000, 20), sample(10, 2000, 25)]);
        sampler.order = vec![(1, 10), (2, 20), (3, 30)];
        let report = sampler.report();
        assert_eq!(report.growing, vec!["node 2 (pid 20): peak rss 1100 -> 2000 KiB, peak fds 20 -> 25".to_string()]);
        assert_eq!(report.processes.len(), 3);
    }
}
