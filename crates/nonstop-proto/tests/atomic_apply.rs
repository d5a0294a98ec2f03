//! However the stream is cut, the backup's image is exactly one checkpoint, never a mix.

mod common;

use common::*;
use nonstop_proto::backup::{Backup, BackupError, BackupOutput};
use nonstop_proto::control::{CloseKind, ImageState};
use nonstop_proto::frame::{FrameReader, FrameWriter};
use nonstop_proto::{CheckpointId, PAGE_SIZE, Term};

const LEN: usize = 8 * PAGE_SIZE;

/// A backup (applying on arrival past `eager_after` bytes) that holds checkpoint 1 = `image`,
/// with the writer and reader of its session, for tests that go on from there.
fn holding(image: &[u8], eager_after: usize) -> (FrameWriter, FrameReader, Backup, Vec<u8>) {
    let mut writer = FrameWriter::new(key());
    let mut wire = Vec::new();
    attach(&mut writer, Term(1), LEN as u64, &mut wire);
    checkpoint(&mut writer, Term(1), CheckpointId(1), full_image(image), true, &mut wire);
    let mut backup = Backup::new(BASE, LEN as u64).with_eager_after(eager_after);
    let mut held = vec![0u8; LEN];
    let mut reader = FrameReader::new(key());
    feed(&mut backup, &mut held, &mut reader, &wire).unwrap();
    assert_eq!(backup.held(), Some(CheckpointId(1)));
    (writer, reader, backup, held)
}

/// Pushes `wire` into `reader` and hands the backup every whole frame, stopping at a refusal.
fn feed(backup: &mut Backup, image: &mut Vec<u8>, reader: &mut FrameReader, wire: &[u8]) -> Result<(), BackupError> {
    reader.push(wire);
    while let Some(frame) = reader.next_frame().unwrap() {
        backup.on_frame(frame, image)?;
    }
    Ok(())
}

fn images() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let mut first = vec![0u8; LEN];
    first[100..200].fill(1);
    first[3 * PAGE_SIZE..4 * PAGE_SIZE].fill(2);
    let mut second = first.clone();
    second[150..160].fill(3);
    second[5 * PAGE_SIZE + 7] = 9;
    second[3 * PAGE_SIZE + 4000..3 * PAGE_SIZE + 4096].fill(4);
    let mut third = second.clone();
    third[7 * PAGE_SIZE..].fill(5);
    (first, second, third)
}

#[test]
fn stream_cut_at_every_byte_leaves_a_whole_checkpoint() {
    let (first, second, third) = images();
    let mut writer = FrameWriter::new(key());
    let mut wire = Vec::new();
    attach(&mut writer, Term(1), LEN as u64, &mut wire);
    checkpoint(&mut writer, Term(1), CheckpointId(1), full_image(&first), true, &mut wire);
    checkpoint(&mut writer, Term(1), CheckpointId(2), diff(&first, &second), false, &mut wire);
    checkpoint(&mut writer, Term(1), CheckpointId(3), diff(&second, &third), false, &mut wire);
    let zero = vec![0u8; LEN];
    let expected = [(None, &zero), (Some(1), &first), (Some(2), &second), (Some(3), &third)];

    for (cut, eager_after) in (0..=wire.len()).flat_map(|cut| [(cut, 0), (cut, usize::MAX)]) {
        let mut backup = Backup::new(BASE, LEN as u64).with_eager_after(eager_after);
        let mut image = vec![0u8; LEN];
        let mut reader = FrameReader::new(key());
        reader.push(&wire[..cut]);
        let mut acked = None;
        while let Some(frame) = reader.next_frame().unwrap() {
            if let Some(BackupOutput::Ack(id)) = backup.on_frame(frame, &mut image).unwrap() {
                acked = Some(id.0);
            }
        }
        backup.on_disconnect(&mut image);
        let held = backup.held().map(|c| c.0);
        assert_eq!(held, acked, "cut at byte {cut}: held what it acknowledged");
        let (_, want) = expected.iter().find(|(id, _)| *id == held).unwrap();
        assert!(image == **want, "cut at byte {cut}: image is not exactly checkpoint {held:?}");
        assert_eq!(backup.seals().check_range(&image, 0, LEN), Ok(()), "cut at byte {cut}: a write left unsealed");
    }
}

/// A bit that flips in the image's memory is found by the scrubber; the backup forgets the
/// image (it holds nothing, so it cannot be promoted) and a new attach makes it whole again.
#[test]
fn a_corrupted_image_is_forgotten_and_resent_whole() {
    let (first, second, _) = images();
    let (mut writer, mut reader, mut backup, mut image) = holding(&first, usize::MAX);
    let lines = LEN / nonstop_proto::integrity::LINE;
    backup.scrub(&mut image, lines).unwrap();

    image[3 * PAGE_SIZE + 17] ^= 0x10;
    let error = backup.scrub(&mut image, lines).unwrap_err();
    assert!(matches!(error, BackupError::Corrupt(c) if c.offset == (3 * PAGE_SIZE) as u64), "{error}");
    assert_eq!(backup.held(), None, "a corrupted image is no checkpoint");
    backup.on_disconnect(&mut image);
    backup.scrub(&mut image, lines).expect("an image holding no checkpoint waits to be replaced, unscrubbed");

    let mut wire = Vec::new();
    attach(&mut writer, Term(2), LEN as u64, &mut wire);
    checkpoint(&mut writer, Term(2), CheckpointId(7), full_image(&second), true, &mut wire);
    feed(&mut backup, &mut image, &mut reader, &wire).unwrap();
    assert_eq!(backup.held(), Some(CheckpointId(7)));
    assert!(image == second);
    backup.scrub(&mut image, lines).unwrap();
}

/// A pre-copy round sent while the "primary" changes pages, then the first checkpoint carrying
/// the pages written since: cut anywhere, the image is either no checkpoint at all (held
/// nothing) or exactly the checkpoint.
#[test]
fn a_precopied_image_is_a_checkpoint_only_once_its_first_checkpoint_completes_it() {
    let (first, second, third) = images();
    let mut writer = FrameWriter::new(key());
    let mut wire = Vec::new();
    attach(&mut writer, Term(2), LEN as u64, &mut wire);
    // Round 1 copied `first`; meanwhile pages 0, 3 and 5 changed (to `second`): the closing
    // checkpoint carries those pages whole.
    for payload in full_image(&first).into_payloads() {
        writer.encode(nonstop_proto::frame::FrameKind::PreCopy, Term(2), CheckpointId(0), &payload, &mut wire);
    }
    let mut delta = nonstop_proto::runs::RunsBuilder::new();
    for page in [0, 3, 5] {
        delta.push((page * PAGE_SIZE) as u64, &second[page * PAGE_SIZE..(page + 1) * PAGE_SIZE]);
    }
    let run_bytes = delta.run_bytes();
    let payloads = delta.into_payloads();
    for payload in &payloads {
        writer.encode(nonstop_proto::frame::FrameKind::Runs, Term(2), CheckpointId(40), payload, &mut wire);
    }
    let close = nonstop_proto::control::Close {
        runs_frames: payloads.len() as u32,
        run_bytes,
        kind: nonstop_proto::control::CloseKind::PreCopied,
    };
    writer.encode(
        nonstop_proto::frame::FrameKind::Close,
        Term(2),
        CheckpointId(40),
        &nonstop_proto::control::encode(&close),
        &mut wire,
    );
    checkpoint(&mut writer, Term(2), CheckpointId(41), diff(&second, &third), false, &mut wire);

    for cut in 0..=wire.len() {
        let mut backup = Backup::new(BASE, LEN as u64).with_eager_after(0);
        let mut image = vec![0u8; LEN];
        let mut reader = FrameReader::new(key());
        feed(&mut backup, &mut image, &mut reader, &wire[..cut]).unwrap();
        backup.on_disconnect(&mut image);
        match backup.held().map(|c| c.0) {
            None => {}
            Some(40) => assert!(image == second, "cut at byte {cut}: not exactly checkpoint 40"),
            Some(41) => assert!(image == third, "cut at byte {cut}: not exactly checkpoint 41"),
            other => panic!("cut at byte {cut}: holds {other:?}"),
        }
        assert_eq!(backup.seals().check_range(&image, 0, LEN), Ok(()), "cut at byte {cut}: a write left unsealed");
    }
}

#[test]
fn precopy_is_refused_once_a_checkpoint_is_held_and_a_false_precopied_close_is_refused() {
    let (first, _, _) = images();
    let mut writer = FrameWriter::new(key());
    let mut wire = Vec::new();
    attach(&mut writer, Term(1), LEN as u64, &mut wire);
    checkpoint(&mut writer, Term(1), CheckpointId(1), full_image(&first), true, &mut wire);
    let payload = full_image(&first).into_payloads().remove(0);
    writer.encode(nonstop_proto::frame::FrameKind::PreCopy, Term(1), CheckpointId(0), &payload, &mut wire);
    let mut backup = Backup::new(BASE, LEN as u64);
    let mut image = vec![0u8; LEN];
    let mut reader = FrameReader::new(key());
    reader.push(&wire);
    let mut results = Vec::new();
    while let Some(frame) = reader.next_frame().unwrap() {
        results.push(backup.on_frame(frame, &mut image));
    }
    assert!(results.last().unwrap().is_err(), "pre-copy after the first checkpoint");
    assert_eq!(backup.held(), Some(CheckpointId(1)));

    // A first checkpoint that claims to complete a pre-copy that never came.
    let mut writer = FrameWriter::new(key());
    let mut wire = Vec::new();
    attach(&mut writer, Term(1), LEN as u64, &mut wire);
    let close = nonstop_proto::control::Close {
        runs_frames: 0,
        run_bytes: 0,
        kind: nonstop_proto::control::CloseKind::PreCopied,
    };
    writer.encode(
        nonstop_proto::frame::FrameKind::Close,
        Term(1),
        CheckpointId(1),
        &nonstop_proto::control::encode(&close),
        &mut wire,
    );
    let mut backup = Backup::new(BASE, LEN as u64);
    let mut reader = FrameReader::new(key());
    reader.push(&wire);
    let mut last = None;
    while let Some(frame) = reader.next_frame().unwrap() {
        last = Some(backup.on_frame(frame, &mut image));
    }
    assert!(last.unwrap().is_err());
    assert_eq!(backup.held(), None);
}

/// A checkpoint whose runs cover part of a corrupted line is refused, staged or eager: sealing
/// the line after writing the run would otherwise seal the corrupted byte beside it.
#[test]
fn a_run_into_a_corrupted_line_is_refused() {
    let (first, second, _) = images();
    for eager_after in [0, usize::MAX] {
        let (mut writer, mut reader, mut backup, mut image) = holding(&first, eager_after);
        image[130] ^= 1; // the line of bytes 128..192; checkpoint 2 writes 150..160
        let mut wire = Vec::new();
        checkpoint(&mut writer, Term(1), CheckpointId(2), diff(&first, &second), false, &mut wire);
        let outcome = feed(&mut backup, &mut image, &mut reader, &wire);
        assert!(
            matches!(outcome, Err(BackupError::Corrupt(c)) if c.offset == 128),
            "eager_after {eager_after}: {outcome:?}"
        );
        assert_eq!(backup.held(), None, "eager_after {eager_after}: a corrupted image is no checkpoint");
    }
}

/// A holder of term 1's checkpoint 2 is rebased by the primary of term 2 with only the pages
/// that differ, then follows it: cut anywhere, the image is exactly the old checkpoint (the
/// rebase is applied at its close or not at all) or one of the new term's.
#[test]
fn a_rebase_cut_at_every_byte_leaves_the_old_checkpoint_or_the_new() {
    let (first, second, _) = images();
    let mut rebased = second.clone();
    rebased[2 * PAGE_SIZE..2 * PAGE_SIZE + 64].fill(8);
    rebased[5 * PAGE_SIZE..6 * PAGE_SIZE].fill(0);
    let mut next = rebased.clone();
    next[6 * PAGE_SIZE + 1] = 1;
    let old = ImageState { term: Term(1), checkpoint: CheckpointId(2) };
    let mut writer = FrameWriter::new(key());
    let mut wire = Vec::new();
    attach_to_rebase(&mut writer, Term(2), LEN as u64, Some(old), &mut wire);
    // Pages 2 and 5 changed; page 3 is sent too (the holder's history names it), unchanged.
    let kind = CloseKind::Rebased { from: old };
    checkpoint_as(&mut writer, Term(2), CheckpointId(3), pages_of(&rebased, [2, 3, 5]), kind, &mut wire);
    checkpoint(&mut writer, Term(2), CheckpointId(4), diff(&rebased, &next), false, &mut wire);

    for (cut, eager_after) in (0..=wire.len()).flat_map(|cut| [(cut, 0), (cut, usize::MAX)]) {
        let (mut old_writer, mut old_reader, mut backup, mut image) = holding(&first, eager_after);
        let mut follow = Vec::new();
        checkpoint(&mut old_writer, Term(1), CheckpointId(2), diff(&first, &second), false, &mut follow);
        feed(&mut backup, &mut image, &mut old_reader, &follow).unwrap();
        assert_eq!(backup.held_with_term(), Some((Term(1), CheckpointId(2))));
        backup.on_disconnect(&mut image);

        let mut reader = FrameReader::new(key());
        reader.push(&wire[..cut]);
        while let Some(frame) = reader.next_frame().unwrap() {
            if let Some(BackupOutput::Holding(holding)) = backup.on_frame(frame, &mut image).unwrap() {
                assert_eq!(holding.held, Some(old));
                assert_eq!(holding.written_since_resumed, Some(vec![]), "it holds the resumed state itself");
            }
        }
        backup.on_disconnect(&mut image);
        let want = match backup.held_with_term() {
            Some((Term(1), CheckpointId(2))) => &second,
            Some((Term(2), CheckpointId(3))) => &rebased,
            Some((Term(2), CheckpointId(4))) => &next,
            other => panic!("cut at byte {cut}: holds {other:?}"),
        };
        assert!(image == *want, "cut at byte {cut}: not exactly {:?}", backup.held_with_term());
        assert_eq!(backup.seals().check_range(&image, 0, LEN), Ok(()), "cut at byte {cut}: a write left unsealed");
    }
}

/// A holder that applied checkpoints the new primary never received names the pages it wrote
/// since the state the new primary resumed from, so that they can be put back.
#[test]
fn a_holder_ahead_of_the_new_primary_names_the_pages_it_wrote_since() {
    let (first, second, third) = images();
    let mut writer = FrameWriter::new(key());
    let mut wire = Vec::new();
    attach(&mut writer, Term(1), LEN as u64, &mut wire);
    checkpoint(&mut writer, Term(1), CheckpointId(1), full_image(&first), true, &mut wire);
    checkpoint(&mut writer, Term(1), CheckpointId(2), diff(&first, &second), false, &mut wire);
    checkpoint(&mut writer, Term(1), CheckpointId(3), diff(&second, &third), false, &mut wire);
    let mut backup = Backup::new(BASE, LEN as u64);
    let mut image = vec![0u8; LEN];
    feed(&mut backup, &mut image, &mut FrameReader::new(key()), &wire).unwrap();
    backup.on_disconnect(&mut image);

    let resumed = ImageState { term: Term(1), checkpoint: CheckpointId(1) };
    let mut writer = FrameWriter::new(key());
    let mut wire = Vec::new();
    attach_to_rebase(&mut writer, Term(2), LEN as u64, Some(resumed), &mut wire);
    let mut reader = FrameReader::new(key());
    reader.push(&wire);
    let frame = reader.next_frame().unwrap().unwrap();
    let Some(BackupOutput::Holding(holding)) = backup.on_frame(frame, &mut image).unwrap() else {
        panic!("an attach asking to rebase is answered");
    };
    assert_eq!(holding.held, Some(ImageState { term: Term(1), checkpoint: CheckpointId(3) }));
    // Checkpoint 2 wrote pages 0, 3 and 5; checkpoint 3 wrote page 7.
    let mut pages = holding.written_since_resumed.expect("it passed through checkpoint 1");
    pages.sort_unstable();
    assert_eq!(pages, [0, 3, 5, 7]);
}
