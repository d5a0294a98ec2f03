//! Authenticated frames with fuzzer-chosen kinds, terms, checkpoints and payloads, applied by a
//! backup to a small image: the MAC is right, so everything past it (attach, runs, pre-copy,
//! close, verify) meets hostile content. A refused frame must leave a held image exactly as
//! the last whole checkpoint left it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nonstop_proto::auth::MacKey;
use nonstop_proto::backup::{Backup, BackupOutput};
use nonstop_proto::frame::{FrameKind, FrameReader, FrameWriter, MAX_PAYLOAD};
use nonstop_proto::{CheckpointId, PAGE_SIZE, Term};

const REGION_BASE: u64 = 0x7000_0000_0000;
const REGION_PAGES: usize = 4;

fuzz_target!(|data: &[u8]| {
    let key = MacKey::from_bytes([9; 32]);
    let mut writer = FrameWriter::new(key.clone());
    let mut reader = FrameReader::new(key);
    let mut backup = Backup::new(REGION_BASE, (REGION_PAGES * PAGE_SIZE) as u64);
    let mut image = vec![0u8; REGION_PAGES * PAGE_SIZE];
    let mut at_last_checkpoint = image.clone();
    let mut rest = data;
    // Each frame: kind byte, term byte, checkpoint byte, payload length (2 bytes), payload.
    while rest.len() >= 5 {
        let (head, tail) = rest.split_at(5);
        let Some(kind) = FrameKind::from_u8(head[0] % 12) else {
            rest = tail;
            continue;
        };
        let len = (u16::from_le_bytes([head[3], head[4]]) as usize).min(tail.len()).min(MAX_PAYLOAD);
        let (payload, tail) = tail.split_at(len);
        rest = tail;
        let mut wire = Vec::new();
        writer.encode(kind, Term(head[1] as u64 % 4), CheckpointId(head[2] as u64 % 8), payload, &mut wire);
        reader.push(&wire);
        let frame = match reader.next_frame() {
            Ok(Some(frame)) => frame,
            Ok(None) => panic!("a whole frame was not decoded"),
            Err(_) => return,
        };
        match backup.on_frame(frame, &mut image) {
            Ok(Some(BackupOutput::Ack(_))) => at_last_checkpoint.clone_from(&image),
            Ok(_) => {}
            Err(_) => {
                // A pre-copy gives up the held checkpoint (the image is being refilled): only a
                // backup that still holds one promises its image.
                if backup.held().is_some() {
                    assert!(image == at_last_checkpoint, "a refused frame changed a held image");
                }
                return;
            }
        }
    }
});
