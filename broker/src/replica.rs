//! Raft over the partition log: every Raft entry of a group is one record
//! batch in the group's `storage::Log` ("Raft's log IS the partition log").
//!
//! - A data entry of a partition is the producer's batch, unchanged but for
//!   the header fields outside its CRC (base offset, term, entry index), which
//!   every replica stamps when it persists the entry. Offsets are a function
//!   of the log prefix (each batch takes `record_count` offsets), so replicas
//!   with the same entries agree on every offset without shipping them.
//! - Raft's own entries (the leader's no-op, membership changes) and the
//!   controller's commands are *control batches*: one record, the
//!   [`wire::attributes::CONTROL`] attribute, a value starting with a
//!   [`ControlTag`]. Consumers skip them; each takes one offset (as Kafka's
//!   control records do).
//! - Term, vote and the log-start point (the entry before the first one kept
//!   after retention, with its term) live in a small `raft.state` file per
//!   group, replaced atomically (write, fsync, rename, fsync the directory).

use std::cell::Cell;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use raft::{Entry, EntryPayload, HardState, InitialState, Membership, SnapshotMeta};
use storage::shard::Partition;

/// What a control batch carries (first byte of its record's value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ControlTag {
    /// A new leader's no-op.
    Empty = 0,
    /// A membership entry: voters then learners, u64 little endian, after a
    /// u32 voter count.
    Membership = 1,
    /// Application bytes that are not a record batch (controller commands).
    Data = 2,
}

/// The record batch an entry is stored as.
pub fn entry_batch(payload: &EntryPayload) -> std::borrow::Cow<'_, [u8]> {
    let control = |tag: ControlTag, body: &[u8]| {
        let mut value = Vec::with_capacity(1 + body.len());
        value.push(tag as u8);
        value.extend_from_slice(body);
        std::borrow::Cow::Owned(wire::encode_control_batch(&value, now_ms()))
    };
    match payload {
        EntryPayload::Empty => control(ControlTag::Empty, &[]),
        EntryPayload::Membership(m) => {
            let mut body = Vec::with_capacity(4 + 8 * (m.voters.len() + m.learners.len()));
            body.extend_from_slice(&(m.voters.len() as u32).to_le_bytes());
            for id in m.voters.iter().chain(m.learners.iter()) {
                body.extend_from_slice(&id.to_le_bytes());
            }
            control(ControlTag::Membership, &body)
        }
        // Always a whole batch: a producer's, or a controller command built
        // by [`command_batch`].
        EntryPayload::Data(bytes) => std::borrow::Cow::Borrowed(bytes.as_slice()),
    }
}

/// A controller command as the control batch it is proposed and stored as.
pub fn command_batch(body: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(1 + body.len());
    value.push(ControlTag::Data as u8);
    value.extend_from_slice(body);
    wire::encode_control_batch(&value, now_ms())
}

/// The body of a controller command batch (see [`command_batch`]).
pub fn command_body(batch: &[u8]) -> Option<&[u8]> {
    let parsed = wire::RecordBatch::parse_without_crc(batch).ok()?;
    let (&tag, body) = parsed.control_payload()?.split_first()?;
    (tag == ControlTag::Data as u8).then_some(body)
}

/// The Raft entry stored as `batch`: producer batches and controller
/// commands are `EntryPayload::Data` holding the whole batch; the no-op and
/// membership entries are decoded from their control batch.
pub fn decode_entry(index: u64, batch: &[u8]) -> Result<Entry, String> {
    let parsed = wire::RecordBatch::parse_without_crc(batch).map_err(|e| e.to_string())?;
    let term = parsed.term();
    if !parsed.is_control() {
        return Ok(Entry {
            index,
            term,
            payload: EntryPayload::data(batch.to_vec()),
        });
    }
    let value = parsed
        .control_payload()
        .ok_or("control batch without one valued record")?;
    let (&tag, body) = value.split_first().ok_or("empty control record")?;
    let payload = match tag {
        t if t == ControlTag::Empty as u8 => EntryPayload::Empty,
        t if t == ControlTag::Data as u8 => EntryPayload::data(batch.to_vec()),
        t if t == ControlTag::Membership as u8 => {
            if body.len() < 4 || (body.len() - 4) % 8 != 0 {
                return Err("malformed membership entry".into());
            }
            let voters = u32::from_le_bytes(body[..4].try_into().unwrap_or_default()) as usize;
            let ids: Vec<u64> = body[4..]
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
                .collect();
            if voters > ids.len() {
                return Err("malformed membership entry".into());
            }
            EntryPayload::Membership(Membership {
                voters: ids[..voters].iter().copied().collect(),
                learners: ids[voters..].iter().copied().collect(),
            })
        }
        other => return Err(format!("unknown control tag {other}")),
    };
    Ok(Entry {
        index,
        term,
        payload,
    })
}

/// The durable per-group Raft state, beside the segments.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RaftState {
    pub term: u64,
    pub vote: Option<u64>,
    pub commit: u64,
    /// The entry just before the first one in the log, and its term (0, 0
    /// while nothing was ever removed).
    pub start_prev_index: u64,
    pub start_prev_term: u64,
}

const STATE_FILE: &str = "raft.state";
const STATE_MAGIC: u32 = 0x4452_5331; // "DRS1"
const STATE_BYTES: usize = 4 + 8 * 5 + 4;

impl RaftState {
    fn encode(&self) -> [u8; STATE_BYTES] {
        let mut b = [0u8; STATE_BYTES];
        b[0..4].copy_from_slice(&STATE_MAGIC.to_le_bytes());
        let fields = [
            self.term,
            self.vote.unwrap_or(0),
            self.commit,
            self.start_prev_index,
            self.start_prev_term,
        ];
        for (i, f) in fields.iter().enumerate() {
            b[4 + 8 * i..12 + 8 * i].copy_from_slice(&f.to_le_bytes());
        }
        let crc = crc32c::crc32c(&b[..STATE_BYTES - 4]);
        b[STATE_BYTES - 4..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Result<RaftState, String> {
        if b.len() != STATE_BYTES {
            return Err(format!("{} bytes, expected {STATE_BYTES}", b.len()));
        }
        let u32_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or_default());
        let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default());
        if u32_at(0) != STATE_MAGIC {
            return Err("bad magic".into());
        }
        if u32_at(STATE_BYTES - 4) != crc32c::crc32c(&b[..STATE_BYTES - 4]) {
            return Err("checksum mismatch".into());
        }
        let vote = u64_at(12);
        Ok(RaftState {
            term: u64_at(4),
            vote: (vote != 0).then_some(vote),
            commit: u64_at(20),
            start_prev_index: u64_at(28),
            start_prev_term: u64_at(36),
        })
    }

    /// Reads `dir/raft.state`; a missing file is a fresh group.
    pub fn load(dir: &Path) -> std::io::Result<RaftState> {
        match std::fs::read(dir.join(STATE_FILE)) {
            Ok(b) => RaftState::decode(&b).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: {e}", dir.join(STATE_FILE).display()),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(RaftState::default()),
            Err(e) => Err(e),
        }
    }

    /// Replaces `dir/raft.state` atomically and durably.
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        replace_file(dir, STATE_FILE, &self.encode())
    }
}

/// Replaces `dir/name` by `bytes` atomically and durably: write a temporary
/// file, fsync it, rename it over the old one, fsync the directory.
/// Blocking: call it off the shard.
pub fn replace_file(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp: PathBuf = dir.join(format!("{name}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_data()?;
    }
    std::fs::rename(&tmp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()
}

/// `raft::Storage` over a partition log.
pub struct LogStore {
    pub part: Rc<Partition>,
    /// The leader's snapshot archives (see `crate::snapshot`).
    pub archives: Rc<crate::snapshot::Archives>,
    /// Counts the entries read back from the log.
    pub entries_read: Rc<Cell<u64>>,
    /// The membership the group was created with (membership changes of
    /// partition groups are not driven yet, so it is also the current one).
    pub membership: Membership,
    pub hard_state: HardState,
    /// `(index, term)` of the entry before the first one kept.
    pub start_prev: Rc<Cell<(u64, u64)>>,
}

fn storage_err(e: impl std::fmt::Display) -> raft::StorageError {
    raft::StorageError::Io(e.to_string())
}

impl raft::Storage for LogStore {
    fn initial_state(&self) -> Result<InitialState, raft::StorageError> {
        Ok(InitialState {
            hard_state: self.hard_state,
            membership: self.membership.clone(),
            // No membership entry is ever proposed on these groups, so the
            // initial membership holds at the end of the log: nothing to scan.
            membership_index: self.last_index(),
        })
    }

    /// The first entry Raft may read: past the saved start point (the
    /// entry before the log start after retention, the last entry of a
    /// compacted range, or an installed snapshot's last entry), and never
    /// before the log's own first entry.
    fn first_index(&self) -> u64 {
        let log = self.part.log();
        let from_log =
            if log.last_entry_index() == 0 || log.first_entry_index() >= log.next_entry_index() {
                log.next_entry_index()
            } else {
                log.first_entry_index()
            };
        from_log.max(self.start_prev.get().0 + 1)
    }

    fn last_index(&self) -> u64 {
        let log = self.part.log();
        (log.next_entry_index() - 1).max(self.start_prev.get().0)
    }

    fn term(&self, index: u64) -> Result<u64, raft::StorageError> {
        let first = self.first_index();
        if index + 1 == first {
            let (prev, term) = self.start_prev.get();
            return Ok(if prev == index { term } else { 0 });
        }
        if index < first {
            return Err(raft::StorageError::Compacted(index));
        }
        if index > self.last_index() {
            return Err(raft::StorageError::Unavailable(index));
        }
        self.part.log().entry_term(index).map_err(storage_err)
    }

    fn entries(&self, lo: u64, hi: u64, max_bytes: u64) -> Result<Vec<Entry>, raft::StorageError> {
        if lo < self.first_index() {
            return Err(raft::StorageError::Compacted(lo));
        }
        if hi > self.last_index() + 1 {
            return Err(raft::StorageError::Unavailable(hi));
        }
        if lo >= hi {
            return Ok(Vec::new());
        }
        let log = self.part.log();
        let batches = log
            .read_entries(lo, hi, max_bytes as usize)
            .map_err(storage_err)?;
        self.entries_read
            .set(self.entries_read.get() + batches.len() as u64);
        batches
            .into_iter()
            .enumerate()
            .map(|(k, b)| decode_entry(lo + k as u64, b).map_err(storage_err))
            .collect()
    }

    /// Bytes of the segments from the one holding entry `index` on.
    fn bytes_from(&self, index: u64) -> u64 {
        let log = self.part.log();
        log.entry_base_offset(index)
            .map_or(0, |offset| log.bytes_from(offset))
    }

    /// The current archive if one reaches the log start point; otherwise
    /// the start point itself, which has no payload yet (Raft waits, and
    /// the shard takes an archive: `RaftGroup::manage_snapshots`).
    fn snapshot_meta(&self) -> SnapshotMeta {
        let (index, term) = self.start_prev.get();
        if let Some(a) = self.archives.usable(index) {
            return SnapshotMeta {
                index: a.index,
                term: a.term,
                membership: self.membership.clone(),
                size_bytes: crate::snapshot::TICKET_BYTES as u64,
            };
        }
        SnapshotMeta {
            index,
            term,
            membership: self.membership.clone(),
            size_bytes: 0,
        }
    }

    /// The payload of a snapshot is its archive's ticket: the archive
    /// streams on a connection of its own.
    fn snapshot_chunk(
        &self,
        index: u64,
        offset: u64,
        max_bytes: u64,
    ) -> Result<Vec<u8>, raft::StorageError> {
        match self.archives.usable(self.start_prev.get().0) {
            Some(a) if a.index == index => {
                let t = a.ticket.encode();
                let from = (offset as usize).min(t.len());
                let to = from.saturating_add(max_bytes as usize).min(t.len());
                Ok(t[from..to].to_vec())
            }
            Some(a) if a.index > index => Err(raft::StorageError::SnapshotOutOfDate(index)),
            _ => Err(raft::StorageError::SnapshotUnavailable),
        }
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_state_round_trips_and_rejects_damage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(RaftState::load(dir.path()).unwrap(), RaftState::default());
        let s = RaftState {
            term: 7,
            vote: Some(3),
            commit: 99,
            start_prev_index: 40,
            start_prev_term: 2,
        };
        s.save(dir.path()).unwrap();
        assert_eq!(RaftState::load(dir.path()).unwrap(), s);
        let path = dir.path().join(STATE_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[5] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let err = RaftState::load(dir.path()).unwrap_err();
        assert!(err.to_string().contains("checksum"), "{err}");
    }

    #[test]
    fn control_entries_round_trip_through_batches() {
        let m = Membership {
            voters: [1, 2, 3].into_iter().collect(),
            learners: [4].into_iter().collect(),
        };
        for payload in [
            EntryPayload::Empty,
            EntryPayload::Membership(m),
            EntryPayload::data(command_batch(b"{\"create\":1}")),
        ] {
            let batch = entry_batch(&payload).into_owned();
            let e = decode_entry(5, &batch).unwrap();
            assert_eq!(e.payload, payload);
            assert_eq!(e.index, 5);
        }
        let command = command_batch(b"cmd");
        assert_eq!(command_body(&command), Some(&b"cmd"[..]));
        let mut b = wire::RecordBatchBuilder::new();
        b.push(wire::NewRecord {
            value: Some(b"v"),
            ..Default::default()
        });
        let data = b.finish();
        assert_eq!(command_body(&data), None, "a producer batch is no command");
        let e = decode_entry(1, &data).unwrap();
        assert_eq!(e.payload, EntryPayload::data(data));
    }
}
