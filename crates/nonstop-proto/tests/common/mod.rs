//! Helpers shared by the protocol tests: a model primary that produces real frames.
#![allow(dead_code)]

use nonstop_proto::auth::MacKey;
use nonstop_proto::control::{self, Attach, Close, CloseKind, ImageState};
use nonstop_proto::diff::diff_page;
use nonstop_proto::frame::{FrameKind, FrameWriter};
use nonstop_proto::runs::RunsBuilder;
use nonstop_proto::{CheckpointId, PAGE_SIZE, Term};

pub const BASE: u64 = 0x2000_0000_0000;

pub fn key() -> MacKey {
    MacKey::from_bytes([42; 32])
}

pub fn attach(writer: &mut FrameWriter, term: Term, len: u64, out: &mut Vec<u8>) {
    attach_to_rebase(writer, term, len, None, out);
}

/// An attach of a primary that resumed from `rebase` and asks what the backup holds.
pub fn attach_to_rebase(writer: &mut FrameWriter, term: Term, len: u64, rebase: Option<ImageState>, out: &mut Vec<u8>) {
    let attach = Attach { region_base: BASE, region_len: len, page_size: PAGE_SIZE as u32, rebase };
    writer.encode(FrameKind::Attach, term, CheckpointId(0), &control::encode(&attach), out);
}

/// The pages `pages` of `image`, whole (what a rebase sends).
pub fn pages_of(image: &[u8], pages: impl IntoIterator<Item = usize>) -> RunsBuilder {
    let mut runs = RunsBuilder::new();
    for page in pages {
        runs.push((page * PAGE_SIZE) as u64, &image[page * PAGE_SIZE..(page + 1) * PAGE_SIZE]);
    }
    runs
}

/// Runs for a whole image of `image`: every non-zero page.
pub fn full_image(image: &[u8]) -> RunsBuilder {
    let mut runs = RunsBuilder::new();
    for (index, page) in image.chunks(PAGE_SIZE).enumerate() {
        if page.iter().any(|&b| b != 0) {
            runs.push((index * PAGE_SIZE) as u64, page);
        }
    }
    runs
}

/// DU runs that turn `before` into `after`.
pub fn diff(before: &[u8], after: &[u8]) -> RunsBuilder {
    let mut runs = RunsBuilder::new();
    for (index, (old, new)) in before.chunks(PAGE_SIZE).zip(after.chunks(PAGE_SIZE)).enumerate() {
        diff_page((index * PAGE_SIZE) as u64, old, new, &mut runs);
    }
    runs
}

/// Encodes a checkpoint: its runs frames and its close.
pub fn checkpoint(
    writer: &mut FrameWriter,
    term: Term,
    id: CheckpointId,
    runs: RunsBuilder,
    full: bool,
    out: &mut Vec<u8>,
) {
    let kind = if full { CloseKind::Whole } else { CloseKind::Changes };
    checkpoint_as(writer, term, id, runs, kind, out);
}

/// Encodes a checkpoint closed as `kind`.
pub fn checkpoint_as(
    writer: &mut FrameWriter,
    term: Term,
    id: CheckpointId,
    runs: RunsBuilder,
    kind: CloseKind,
    out: &mut Vec<u8>,
) {
    let run_bytes = runs.run_bytes();
    let payloads = runs.into_payloads();
    for payload in &payloads {
        writer.encode(FrameKind::Runs, term, id, payload, out);
    }
    let close = Close { runs_frames: payloads.len() as u32, run_bytes, kind };
    writer.encode(FrameKind::Close, term, id, &control::encode(&close), out);
}
