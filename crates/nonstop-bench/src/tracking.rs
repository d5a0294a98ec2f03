//! `nonstop bench tracking`: what finding the writes costs in each mode — a first write to a
//! page in a checkpoint, and a checkpoint cut against the number of pages written.
//!
//! Modes: `plain` (transparent writes, nothing tracked: the floor), `declared` (transactions
//! declaring each range, DU twins), `uffd` and `mprotect` (transparent mode). Every run is in
//! this process, without backups: it measures the primary's side alone.

use anyhow::Context;
use nonstop_proto::{CheckpointId, PAGE_SIZE, UpdateProtocol};
use nonstop_region::tracking::TrackingMode;
use nonstop_region::{Mirror, Region, RegionWrite, Update};
use nonstop_testbed::chart;
use serde::Serialize;
use std::time::Instant;

/// What to measure.
#[derive(Clone, Debug)]
pub struct TrackingBenchConfig {
    /// Pages in the region, and the most pages a checkpoint dirties.
    pub pages: usize,
    /// Cuts timed per point (the median is reported).
    pub repeats: usize,
    /// Where the region is mapped.
    pub region_base: usize,
}

/// One mode's figures.
#[derive(Clone, Debug, Serialize)]
pub struct ModeReport {
    /// "plain", "declared", "uffd" or "mprotect".
    pub tracking: String,
    /// Nanoseconds per first write to a page in a checkpoint (an 8-byte write to each page
    /// of the region, pages already populated, 32 pages per update or transaction).
    pub first_write_ns: f64,
    /// Cut time against pages written in the checkpoint.
    pub cuts: Vec<CutPoint>,
}

/// A cut of a checkpoint that wrote `dirty_pages` pages.
#[derive(Clone, Debug, Serialize)]
pub struct CutPoint {
    /// Pages written (8 bytes each, spread over the region).
    pub dirty_pages: usize,
    /// Median cut time, microseconds.
    pub cut_us: f64,
    /// Change bytes the cut produced.
    pub change_bytes: u64,
}

/// Every mode's figures.
#[derive(Clone, Debug, Serialize)]
pub struct TrackingReport {
    /// Pages in the region.
    pub pages: usize,
    /// By mode.
    pub modes: Vec<ModeReport>,
}

#[derive(Clone, Copy)]
enum Mode {
    Plain,
    Declared,
    Kernel(TrackingMode),
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Plain => "plain",
            Mode::Declared => "declared",
            Mode::Kernel(mode) => mode.name(),
        }
    }

    fn mirror(self, region: Region) -> anyhow::Result<Mirror> {
        Ok(match self {
            Mode::Plain => Mirror::transparent_unreplicated(region, CheckpointId(1)),
            Mode::Declared => Mirror::unsealed(region, Some(UpdateProtocol::Du), CheckpointId(1)),
            Mode::Kernel(mode) => Mirror::tracked(region, Some(mode), CheckpointId(1))?,
        })
    }
}

/// Pages written per update or transaction: few enough that their overlap checks (linear in
/// the ranges already handed out) stay small next to a write.
const PAGES_PER_UPDATE: usize = 32;

/// Writes `value` into the first word of each of `pages` (all distinct), in the mode's way:
/// updates or transactions of [`PAGES_PER_UPDATE`] pages each.
fn write_pages(mirror: &Mirror, pages: &[usize], value: u64) {
    for chunk in pages.chunks(PAGES_PER_UPDATE) {
        if mirror.is_transparent() {
            mirror.update(|image| write_chunk(&Update::new(image), chunk, value));
        } else {
            let tx = mirror.begin();
            write_chunk(&tx, chunk, value);
            tx.commit();
        }
    }
}

fn write_chunk(writer: &impl RegionWrite, pages: &[usize], value: u64) {
    for &page in pages {
        *writer.write::<u64>((page * PAGE_SIZE) as u64).expect("in bounds, distinct pages") = value;
    }
}

/// Runs the measurements for every mode that works here.
pub fn run(config: &TrackingBenchConfig, mut progress: impl FnMut(&str)) -> anyhow::Result<TrackingReport> {
    let mut modes = vec![Mode::Plain, Mode::Declared];
    modes.extend(TrackingMode::ALL.map(Mode::Kernel));
    let all: Vec<usize> = (0..config.pages).collect();
    let mut reports = Vec::new();
    for mode in modes {
        progress(mode.name());
        let region = Region::map(config.region_base, config.pages * PAGE_SIZE).context("mapping the region")?;
        let mirror = match mode.mirror(region) {
            Ok(mirror) => mirror,
            Err(error) => {
                progress(&format!("{} unavailable here: {error:#}", mode.name()));
                continue;
            }
        };
        // Populate every page first: a first write to a never-touched page also pays the
        // kernel's page allocation, which no mode can avoid.
        write_pages(&mirror, &all, 1);
        mirror.cut(false);
        let started = Instant::now();
        write_pages(&mirror, &all, 2);
        let first_write_ns = started.elapsed().as_nanos() as f64 / config.pages as f64;
        mirror.cut(false);
        let mut cuts = Vec::new();
        let mut value = 3;
        let mut dirty = 1;
        while dirty <= config.pages {
            let stride = config.pages / dirty;
            let pages: Vec<usize> = (0..dirty).map(|i| i * stride).collect();
            let mut times = Vec::new();
            let mut change_bytes = 0;
            for _ in 0..config.repeats.max(1) {
                value += 1;
                write_pages(&mirror, &pages, value);
                let started = Instant::now();
                let cut = mirror.cut(false);
                times.push(started.elapsed().as_secs_f64() * 1e6);
                change_bytes = cut.changes.run_bytes();
            }
            times.sort_by(f64::total_cmp);
            cuts.push(CutPoint { dirty_pages: dirty, cut_us: times[times.len() / 2], change_bytes });
            dirty *= 10;
        }
        reports.push(ModeReport { tracking: mode.name().into(), first_write_ns, cuts });
    }
    Ok(TrackingReport { pages: config.pages, modes: reports })
}

impl TrackingReport {
    /// Cut time against dirty pages, one line per mode, on a log scale of pages.
    pub fn svg(&self) -> String {
        let series: Vec<(String, Vec<(f64, f64)>)> = self
            .modes
            .iter()
            .map(|m| {
                let points = m.cuts.iter().map(|c| ((c.dirty_pages as f64).log10(), c.cut_us / 1000.0)).collect();
                (m.tracking.clone(), points)
            })
            .collect();
        chart::lines(
            "Checkpoint cut time against pages written",
            "pages written in the checkpoint (log10: 0 = 1 page, 5 = 100,000)",
            "cut time (ms)",
            &series,
        )
    }

    /// A Markdown table of the same figures.
    pub fn markdown(&self) -> String {
        let mut out = String::from("| mode | first write ns |");
        let points: Vec<usize> =
            self.modes.first().map(|m| m.cuts.iter().map(|c| c.dirty_pages).collect()).unwrap_or_default();
        for dirty in &points {
            out += &format!(" cut {dirty} pages us |");
        }
        out += "\n|---|---:|";
        out += &"---:|".repeat(points.len());
        for mode in &self.modes {
            out += &format!("\n| {} | {:.0} |", mode.tracking, mode.first_write_ns);
            for cut in &mode.cuts {
                out += &format!(" {:.0} |", cut.cut_us);
            }
        }
        out + "\n"
    }
}
