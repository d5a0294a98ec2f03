//! Bad input is refused with a clear error and changes nothing.

mod common;

use common::*;
use nonstop_proto::backup::{Backup, BackupError};
use nonstop_proto::control::{self, Close, CloseKind, ImageState};
use nonstop_proto::frame::{FrameError, FrameKind, FrameReader, FrameWriter, HEADER_LEN};
use nonstop_proto::runs::{RUN_HEADER_LEN, RunsBuilder, RunsError};
use nonstop_proto::{CheckpointId, PAGE_SIZE, Term};

const LEN: u64 = 4 * PAGE_SIZE as u64;

/// A backup holding checkpoint 1 (term 2) and its image.
fn attached() -> (Backup, Vec<u8>, FrameWriter, FrameReader) {
    let mut writer = FrameWriter::new(key());
    let mut reader = FrameReader::new(key());
    let mut backup = Backup::new(BASE, LEN);
    let mut image = vec![0u8; LEN as usize];
    let mut wire = Vec::new();
    attach(&mut writer, Term(2), LEN, &mut wire);
    let mut first = vec![0u8; LEN as usize];
    first[10..20].fill(7);
    checkpoint(&mut writer, Term(2), CheckpointId(1), full_image(&first), true, &mut wire);
    reader.push(&wire);
    while let Some(frame) = reader.next_frame().unwrap() {
        backup.on_frame(frame, &mut image).unwrap();
    }
    assert_eq!(backup.held(), Some(CheckpointId(1)));
    (backup, image, writer, reader)
}

/// Feeds `wire` and returns the first error, checking the image did not change.
fn refused(wire: &[u8], backup: &mut Backup, image: &mut Vec<u8>, reader: &mut FrameReader) -> String {
    let before = image.clone();
    reader.push(wire);
    let error = loop {
        match reader.next_frame() {
            Ok(Some(frame)) => match backup.on_frame(frame, image) {
                Ok(_) => continue,
                Err(error) => break error.to_string(),
            },
            Ok(None) => {
                backup.on_disconnect(image);
                break "stream ended without a complete frame".to_string();
            }
            Err(error) => break error.to_string(),
        }
    };
    backup.on_disconnect(image);
    assert!(*image == before, "a refused stream changed the image ({error})");
    assert_eq!(backup.held(), Some(CheckpointId(1)));
    error
}

fn runs_at(offset: u64, bytes: &[u8]) -> RunsBuilder {
    let mut runs = RunsBuilder::new();
    runs.push(offset, bytes);
    runs
}

#[test]
fn run_outside_the_region_is_refused() {
    let (mut backup, mut image, mut writer, mut reader) = attached();
    let mut wire = Vec::new();
    checkpoint(&mut writer, Term(2), CheckpointId(2), runs_at(LEN - 2, b"abcd"), false, &mut wire);
    let error = refused(&wire, &mut backup, &mut image, &mut reader);
    assert!(error.contains("past the end"), "{error}");
}

#[test]
fn truncated_runs_payload_is_refused() {
    let (mut backup, mut image, mut writer, mut reader) = attached();
    let mut payload = runs_at(0, b"abcdef").into_payloads().remove(0);
    payload.truncate(RUN_HEADER_LEN + 2);
    let mut wire = Vec::new();
    writer.encode(FrameKind::Runs, Term(2), CheckpointId(2), &payload, &mut wire);
    let error = refused(&wire, &mut backup, &mut image, &mut reader);
    assert_eq!(error, RunsError::Truncated { at: 0 }.to_string());
}

#[test]
fn oversized_length_is_refused_before_waiting_for_the_payload() {
    let (mut backup, mut image, mut writer, mut reader) = attached();
    let mut wire = Vec::new();
    writer.encode(FrameKind::Runs, Term(2), CheckpointId(2), b"x", &mut wire);
    wire[8..12].copy_from_slice(&(64u32 << 20).to_le_bytes());
    let error = refused(&wire[..HEADER_LEN], &mut backup, &mut image, &mut reader);
    assert!(error.contains("limit"), "{error}");
}

#[test]
fn stale_term_is_fenced() {
    let (mut backup, mut image, mut writer, mut reader) = attached();
    let mut wire = Vec::new();
    checkpoint(&mut writer, Term(1), CheckpointId(2), runs_at(0, b"old primary"), false, &mut wire);
    let error = refused(&wire, &mut backup, &mut image, &mut reader);
    assert_eq!(error, BackupError::StaleTerm { current: Term(2), got: Term(1) }.to_string());
    // An old primary cannot re-attach either.
    let mut wire = Vec::new();
    let (mut backup, mut image, mut writer, mut reader) = attached();
    attach(&mut writer, Term(1), LEN, &mut wire);
    assert!(refused(&wire, &mut backup, &mut image, &mut reader).contains("fenced"));
}

#[test]
fn flipped_bit_fails_the_crc_and_forged_frame_fails_the_mac() {
    let (mut backup, mut image, mut writer, mut reader) = attached();
    let mut wire = Vec::new();
    checkpoint(&mut writer, Term(2), CheckpointId(2), runs_at(0, b"hello"), false, &mut wire);
    wire[HEADER_LEN + RUN_HEADER_LEN] ^= 0x10;
    let error = refused(&wire, &mut backup, &mut image, &mut reader);
    assert!(error.contains("CRC32C"), "{error}");

    let (mut backup, mut image, _, mut reader) = attached();
    let mut forger = FrameWriter::new(nonstop_proto::auth::MacKey::from_bytes([1; 32]));
    let mut wire = Vec::new();
    checkpoint(&mut forger, Term(2), CheckpointId(2), runs_at(0, b"hello"), false, &mut wire);
    assert_eq!(refused(&wire, &mut backup, &mut image, &mut reader), FrameError::BadMac.to_string());
}

#[test]
fn incomplete_or_out_of_order_checkpoints_are_refused() {
    let (mut backup, mut image, mut writer, mut reader) = attached();
    let mut wire = Vec::new();
    let close = Close { runs_frames: 2, run_bytes: 5, kind: CloseKind::Changes };
    writer.encode(FrameKind::Runs, Term(2), CheckpointId(2), &runs_at(0, b"hello").into_payloads()[0], &mut wire);
    writer.encode(FrameKind::Close, Term(2), CheckpointId(2), &control::encode(&close), &mut wire);
    assert!(refused(&wire, &mut backup, &mut image, &mut reader).contains("announces 2 frames"));

    let (mut backup, mut image, mut writer, mut reader) = attached();
    let mut wire = Vec::new();
    checkpoint(&mut writer, Term(2), CheckpointId(5), runs_at(0, b"skip"), false, &mut wire);
    assert!(refused(&wire, &mut backup, &mut image, &mut reader).contains("in order"));
}

#[test]
fn region_mismatch_is_refused() {
    let mut writer = FrameWriter::new(key());
    let mut reader = FrameReader::new(key());
    let mut backup = Backup::new(BASE, LEN);
    let mut image = vec![0u8; LEN as usize];
    let mut wire = Vec::new();
    attach(&mut writer, Term(1), LEN * 2, &mut wire);
    reader.push(&wire);
    let error = backup.on_frame(reader.next_frame().unwrap().unwrap(), &mut image).unwrap_err();
    assert!(error.to_string().contains("same region"), "{error}");
    assert_eq!(backup.term(), None);
}

#[test]
fn whole_image_numbering_is_ordered_within_a_term_only() {
    // The same primary re-attaching must continue its numbering.
    let (mut backup, mut image, mut writer, mut reader) = attached();
    let mut wire = Vec::new();
    attach(&mut writer, Term(2), LEN, &mut wire);
    let mut old = vec![0u8; LEN as usize];
    old[0] = 1;
    checkpoint(&mut writer, Term(2), CheckpointId(1), full_image(&old), true, &mut wire);
    assert!(refused(&wire, &mut backup, &mut image, &mut reader).contains("in order"));

    // A newer primary numbers its checkpoints afresh.
    let (mut backup, mut image, mut writer, mut reader) = attached();
    let mut wire = Vec::new();
    attach(&mut writer, Term(3), LEN, &mut wire);
    let mut new = vec![0u8; LEN as usize];
    new[0] = 9;
    checkpoint(&mut writer, Term(3), CheckpointId(1), full_image(&new), true, &mut wire);
    reader.push(&wire);
    while let Some(frame) = reader.next_frame().unwrap() {
        backup.on_frame(frame, &mut image).unwrap();
    }
    assert_eq!(backup.held_with_term(), Some((Term(3), CheckpointId(1))));
    assert_eq!(image, new);
}

#[test]
fn a_rebase_from_a_state_not_held_is_refused() {
    let (mut backup, mut image, mut writer, mut reader) = attached();
    let mut wire = Vec::new();
    let resumed = ImageState { term: Term(2), checkpoint: CheckpointId(5) };
    attach_to_rebase(&mut writer, Term(3), LEN, Some(resumed), &mut wire);
    let mut target = image.clone();
    target[PAGE_SIZE..2 * PAGE_SIZE].fill(9);
    // The primary claims the backup holds checkpoint 5; it holds 1.
    let kind = CloseKind::Rebased { from: resumed };
    checkpoint_as(&mut writer, Term(3), CheckpointId(6), pages_of(&target, [1]), kind, &mut wire);
    let error = refused(&wire, &mut backup, &mut image, &mut reader);
    assert!(error.contains("rebases from"), "{error}");
}

#[test]
fn a_rebase_after_the_first_checkpoint_of_a_session_is_refused() {
    let (mut backup, mut image, mut writer, mut reader) = attached();
    let mut wire = Vec::new();
    let held = ImageState { term: Term(2), checkpoint: CheckpointId(1) };
    let target = image.clone();
    let kind = CloseKind::Rebased { from: held };
    checkpoint_as(&mut writer, Term(2), CheckpointId(2), pages_of(&target, [0]), kind, &mut wire);
    let error = refused(&wire, &mut backup, &mut image, &mut reader);
    assert!(error.contains("whole image"), "{error}");
}

#[test]
fn a_holding_frame_from_a_primary_is_refused() {
    let (mut backup, mut image, mut writer, mut reader) = attached();
    let mut wire = Vec::new();
    let holding = control::Holding { held: None, written_since_resumed: None };
    writer.encode(FrameKind::Holding, Term(2), CheckpointId(0), &control::encode(&holding), &mut wire);
    let error = refused(&wire, &mut backup, &mut image, &mut reader);
    assert!(error.contains("unexpected Holding"), "{error}");
}
