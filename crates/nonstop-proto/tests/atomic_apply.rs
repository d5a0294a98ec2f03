//! However the stream is cut, the backup's image is exactly one checkpoint, never a mix.

mod common;

use common::*;
use nonstop_proto::backup::{Backup, BackupOutput};
use nonstop_proto::frame::{FrameReader, FrameWriter};
use nonstop_proto::{CheckpointId, PAGE_SIZE, Term};

const LEN: usize = 8 * PAGE_SIZE;

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
    }
}
