//! The durable part of a node's Raft state: its log entries and hard state (term, vote,
//! commit).
//!
//! Raft is only safe if a node that restarts remembers what it voted for and what it appended.
//! [`RaftLog`] is the seam: [`FileLog`] appends checksummed records to a file and syncs them
//! before the node sends the messages that depend on them; [`MemoryLog`] keeps them in memory,
//! shared by its clones, so the simulator can crash a node and restart it with its "disk".
//!
//! File format: a sequence of records, each `len: u32 LE | crc32c(payload): u32 LE | payload`,
//! the payload a postcard-encoded [`Record`]. A record cut short at the end of the file is a
//! write torn by a crash and is cut off; a complete record with a wrong checksum is corruption
//! and refuses to load.

use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use thiserror::Error;

/// The longest record accepted when loading (a Raft append carries a few small commands).
pub const MAX_RECORD: usize = 16 << 20;

/// One Raft log entry as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEntry {
    /// Log index.
    pub index: u64,
    /// Raft term of the entry.
    pub term: u64,
    /// Raft's entry type (normal, configuration change).
    pub kind: i32,
    /// The command bytes.
    pub data: Vec<u8>,
    /// Raft's entry context.
    pub context: Vec<u8>,
}

/// One durable change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// Entries appended from `entries[0].index` on, replacing any entries from that index.
    Entries(Vec<StoredEntry>),
    /// Everything up to `index` is compacted into this snapshot of the cluster state.
    Snapshot {
        /// Last index it covers.
        index: u64,
        /// Term of that entry.
        term: u64,
        /// Voters at that point.
        voters: Vec<u64>,
        /// The cluster state, postcard-encoded.
        data: Vec<u8>,
    },
    /// The node's hard state.
    HardState {
        /// Raft term.
        term: u64,
        /// Who the node voted for in that term (0: nobody).
        vote: u64,
        /// The highest index known committed.
        commit: u64,
    },
}

/// Why a node's Raft log could not be loaded or written.
#[derive(Debug, Error)]
pub enum LogError {
    /// Reading or writing the file failed.
    #[error("raft log {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A complete record failed its checksum or did not decode.
    #[error(
        "raft log {path} is corrupt at byte {offset}: {what}. The node cannot safely rejoin with it: \
         move the file away and add the node back as a new member"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Where the bad record starts.
        offset: u64,
        /// What was wrong.
        what: String,
    },
}

/// Where a node keeps its Raft state.
pub trait RaftLog: Send {
    /// Every record written so far, in order.
    fn load(&mut self) -> Result<Vec<Record>, LogError>;
    /// Appends records; they must survive a crash once this returns.
    fn append(&mut self, records: &[Record]) -> Result<(), LogError>;
    /// Appends records that a restart can do without, unsynced: a crash of the process keeps
    /// them, a crash of the machine may lose them (and any unsynced ones after them), and the
    /// next [`RaftLog::append`] makes them durable with its own.
    fn append_unsynced(&mut self, records: &[Record]) -> Result<(), LogError>;
    /// Replaces the whole log by `records` (after a compaction), atomically: a crash leaves
    /// either the old log or the new one.
    fn rewrite(&mut self, records: &[Record]) -> Result<(), LogError>;
}

/// A log in memory. Clones share the records: keep one clone as the node's "disk" and hand
/// another to the node, and the records outlive a simulated crash of the node
/// ([`MemoryLog::lose_unsynced`] for a crash of its machine).
#[derive(Clone, Debug, Default)]
pub struct MemoryLog {
    disk: Arc<Mutex<MemoryDisk>>,
}

#[derive(Debug, Default)]
struct MemoryDisk {
    records: Vec<Record>,
    /// The records before this one are synced.
    synced: usize,
}

impl MemoryLog {
    fn disk(&self) -> std::sync::MutexGuard<'_, MemoryDisk> {
        self.disk.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What a crash of the machine does to the disk: the records appended since the last sync
    /// are gone.
    pub fn lose_unsynced(&self) {
        let mut disk = self.disk();
        let synced = disk.synced;
        disk.records.truncate(synced);
    }
}

impl RaftLog for MemoryLog {
    fn load(&mut self) -> Result<Vec<Record>, LogError> {
        Ok(self.disk().records.clone())
    }

    fn append(&mut self, records: &[Record]) -> Result<(), LogError> {
        let mut disk = self.disk();
        disk.records.extend_from_slice(records);
        disk.synced = disk.records.len();
        Ok(())
    }

    fn append_unsynced(&mut self, records: &[Record]) -> Result<(), LogError> {
        self.disk().records.extend_from_slice(records);
        Ok(())
    }

    fn rewrite(&mut self, records: &[Record]) -> Result<(), LogError> {
        let mut disk = self.disk();
        disk.records = records.to_vec();
        disk.synced = disk.records.len();
        Ok(())
    }
}

/// A log in a file, synced (`fdatasync`) on every append but an unsynced one.
#[derive(Debug)]
pub struct FileLog {
    path: PathBuf,
    file: File,
}

impl FileLog {
    /// Opens (or creates) the log at `path`.
    pub fn open(path: &Path) -> Result<FileLog, LogError> {
        let io = |source| LogError::Io { path: path.to_path_buf(), source };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let file = OpenOptions::new().read(true).append(true).create(true).open(path).map_err(io)?;
        Ok(FileLog { path: path.to_path_buf(), file })
    }

    fn io(&self, source: io::Error) -> LogError {
        LogError::Io { path: self.path.clone(), source }
    }
}

impl RaftLog for FileLog {
    fn load(&mut self) -> Result<Vec<Record>, LogError> {
        let mut bytes = Vec::new();
        self.file.seek(SeekFrom::Start(0)).map_err(|e| self.io(e))?;
        self.file.read_to_end(&mut bytes).map_err(|e| self.io(e))?;
        let (records, good) = decode_records(&bytes).map_err(|(offset, what)| LogError::Corrupt {
            path: self.path.clone(),
            offset,
            what,
        })?;
        if good < bytes.len() {
            tracing::warn!(path = %self.path.display(), at = good, "cutting off a record torn by a crash");
            self.file.set_len(good as u64).map_err(|e| self.io(e))?;
            self.file.sync_data().map_err(|e| self.io(e))?;
        }
        Ok(records)
    }

    fn append(&mut self, records: &[Record]) -> Result<(), LogError> {
        if records.is_empty() {
            return Ok(());
        }
        self.append_unsynced(records)?;
        self.file.sync_data().map_err(|e| self.io(e))
    }

    fn append_unsynced(&mut self, records: &[Record]) -> Result<(), LogError> {
        self.file.write_all(&encode_records(records)).map_err(|e| self.io(e))
    }

    fn rewrite(&mut self, records: &[Record]) -> Result<(), LogError> {
        let bytes = encode_records(records);
        let temporary = self.path.with_extension("rewrite");
        let io = |source| LogError::Io { path: temporary.clone(), source };
        {
            let mut file = File::create(&temporary).map_err(io)?;
            file.write_all(&bytes).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        std::fs::rename(&temporary, &self.path).map_err(|e| self.io(e))?;
        if let Some(parent) = self.path.parent() {
            // The rename itself must be durable before the old entries are relied on as gone.
            File::open(parent).and_then(|dir| dir.sync_all()).map_err(|e| self.io(e))?;
        }
        self.file = OpenOptions::new().read(true).append(true).open(&self.path).map_err(|e| self.io(e))?;
        Ok(())
    }
}

fn encode_records(records: &[Record]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for record in records {
        encode_record(record, &mut bytes);
    }
    bytes
}

/// Appends one framed record to `out`.
pub fn encode_record(record: &Record, out: &mut Vec<u8>) {
    let payload = postcard::to_stdvec(record).expect("records always serialize");
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
}

/// Decodes framed records. Returns them and the length of the good prefix (shorter than
/// `bytes` if the last record is torn), or the offset and reason of a corrupt record.
pub fn decode_records(bytes: &[u8]) -> Result<(Vec<Record>, usize), (u64, String)> {
    let mut records = Vec::new();
    let mut at = 0;
    while bytes.len() - at >= 8 {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes"));
        if len > MAX_RECORD {
            return Err((at as u64, format!("record length {len} exceeds {MAX_RECORD}")));
        }
        let Some(payload) = bytes.get(at + 8..at + 8 + len) else { break };
        if crc32c::crc32c(payload) != crc {
            return Err((at as u64, "checksum mismatch".into()));
        }
        let record = postcard::from_bytes(payload).map_err(|e| (at as u64, format!("undecodable record: {e}")))?;
        records.push(record);
        at += 8 + len;
    }
    Ok((records, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Record> {
        vec![
            Record::HardState { term: 2, vote: 1, commit: 0 },
            Record::Entries(vec![StoredEntry { index: 1, term: 2, kind: 0, data: b"x".to_vec(), context: vec![] }]),
        ]
    }

    #[test]
    fn a_file_log_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.log");
        FileLog::open(&path).unwrap().append(&sample()).unwrap();
        assert_eq!(FileLog::open(&path).unwrap().load().unwrap(), sample());
    }

    /// A record appended unsynced outlives the process that wrote it (the file has it).
    #[test]
    fn an_unsynced_record_is_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.log");
        let commit = Record::HardState { term: 2, vote: 1, commit: 1 };
        let mut log = FileLog::open(&path).unwrap();
        log.append(&sample()).unwrap();
        log.append_unsynced(std::slice::from_ref(&commit)).unwrap();
        drop(log);
        let mut expected = sample();
        expected.push(commit);
        assert_eq!(FileLog::open(&path).unwrap().load().unwrap(), expected);
    }

    /// The simulator's disk loses what was not synced when its machine crashes, and only that.
    #[test]
    fn a_machine_crash_loses_the_unsynced_records_only() {
        let commit = |commit| Record::HardState { term: 2, vote: 1, commit };
        let disk = MemoryLog::default();
        let mut log = disk.clone();
        log.append(&sample()).unwrap();
        log.append_unsynced(&[commit(1)]).unwrap();
        disk.lose_unsynced();
        assert_eq!(log.load().unwrap(), sample(), "the unsynced commit is gone");
        log.append_unsynced(&[commit(1)]).unwrap();
        log.append(&[commit(2)]).unwrap();
        disk.lose_unsynced();
        let mut expected = sample();
        expected.extend([commit(1), commit(2)]);
        assert_eq!(log.load().unwrap(), expected, "a sync keeps the unsynced records before it");
    }

    #[test]
    fn a_torn_tail_is_cut_off_at_every_length() {
        let mut bytes = Vec::new();
        for record in sample() {
            encode_record(&record, &mut bytes);
        }
        let first_len = {
            let mut one = Vec::new();
            encode_record(&sample()[0], &mut one);
            one.len()
        };
        for cut in 0..bytes.len() {
            let (records, good) = decode_records(&bytes[..cut]).unwrap();
            let expected = if cut >= first_len { 1 } else { 0 };
            assert_eq!(records.len(), expected, "cut at {cut}");
            assert_eq!(good, if expected == 1 { first_len } else { 0 });
        }
    }

    #[test]
    fn a_flipped_bit_is_corruption_not_a_torn_write() {
        let mut bytes = Vec::new();
        for record in sample() {
            encode_record(&record, &mut bytes);
        }
        for bit in 64..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            // Flipping a payload bit must be caught by the checksum.
            if let Ok((records, _)) = decode_records(&flipped) {
                assert_ne!(records, sample(), "bit {bit} flipped undetected");
            }
        }
    }

    #[test]
    fn a_rewrite_replaces_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.log");
        let mut log = FileLog::open(&path).unwrap();
        log.append(&sample()).unwrap();
        let snapshot = Record::Snapshot { index: 9, term: 2, voters: vec![1, 2, 3], data: vec![1, 2] };
        log.rewrite(std::slice::from_ref(&snapshot)).unwrap();
        log.append(&sample()[..1]).unwrap();
        assert_eq!(FileLog::open(&path).unwrap().load().unwrap(), vec![snapshot, sample()[0].clone()]);
    }

    #[test]
    fn the_file_is_truncated_after_a_torn_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.log");
        FileLog::open(&path).unwrap().append(&sample()).unwrap();
        let len = std::fs::metadata(&path).unwrap().len();
        OpenOptions::new().append(true).open(&path).unwrap().write_all(&[9, 0, 0, 0, 1]).unwrap();
        let mut log = FileLog::open(&path).unwrap();
        assert_eq!(log.load().unwrap(), sample());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
    }
}
