//! The record batch layout, as far as storage needs it.
//!
//! This is the only module that knows the batch format; it will be swapped
//! for the `wire` crate's codec once that lands (`wire::batch` describes the
//! same layout; keep both in sync). Header (72 bytes, all little endian):
//!
//! | at | field | type |
//! |---|---|---|
//! | 0 | base_offset | u64 |
//! | 8 | term | u64 |
//! | 16 | entry_index: Raft log index of the entry holding the batch | u64 |
//! | 24 | batch_bytes (whole batch, header included) | u32 |
//! | 28 | crc32c over `[32..batch_bytes)` | u32 |
//! | 32 | magic (2) | u8 |
//! | 33 | reserved | u8 |
//! | 34 | attributes (bit 4: control batch) | u16 |
//! | 36 | record_count | u32 |
//! | 40 | first_timestamp_ms | i64 |
//! | 48 | max_timestamp_ms | i64 |
//! | 56 | producer id, epoch, reserved, base sequence (not read here) | 16 bytes |
//!
//! Base offset, term and entry index are outside the CRC so that they can be
//! stamped without re-hashing: the leader stamps base offset and term, each
//! replica stamps the entry index as it persists the entry. Records follow
//! the header; each is
//! `varint record_bytes, u8 attributes, zigzag timestamp_delta, varint
//! offset_delta, varint key_len+1 (0 = null), key, varint value_len+1
//! (0 = null = tombstone), value, varint header_count, headers...`.

/// Bytes in a batch header.
pub const HEADER_BYTES: usize = 72;
/// The batch format version (as `wire::batch::BATCH_MAGIC`).
pub const MAGIC: u8 = 2;
const BASE_OFFSET_AT: usize = 0;
const TERM_AT: usize = 8;
const ENTRY_INDEX_AT: usize = 16;
const BATCH_BYTES_AT: usize = 24;
const CRC_AT: usize = 28;
/// First byte covered by the CRC.
const CRC_FROM: usize = 32;
const MAGIC_AT: usize = 32;
const ATTRIBUTES_AT: usize = 34;
const RECORD_COUNT_AT: usize = 36;
const FIRST_TIMESTAMP_AT: usize = 40;
const MAX_TIMESTAMP_AT: usize = 48;

/// Attribute bits (as `wire::batch::attributes`).
pub mod attributes {
    /// A control batch: one record holding an opaque control payload (Raft
    /// no-op, membership, controller command); consumers skip it.
    pub const CONTROL: u16 = 1 << 4;
}

/// Largest batch storage accepts: 16 MiB, so a batch always fits a segment
/// (segments are at least [`crate::SEGMENT_BYTES_MIN`]) and one append copies
/// at most 16 MiB on the executor (a few milliseconds at memcpy speed).
pub const BATCH_BYTES_MAX: usize = 16 << 20;
/// Most records a batch may claim: one per byte after the header at worst
/// (each record takes at least 7 bytes, so this is loose but bounded).
pub const RECORD_COUNT_MAX: u32 = BATCH_BYTES_MAX as u32;
/// Longest LEB128 varint for a u64.
const VARINT_BYTES_MAX: usize = 10;
/// Most headers per record, so parsing a corrupt-but-CRC-valid batch is bounded.
const RECORD_HEADER_COUNT_MAX: u64 = 1 << 16;

/// Why a batch was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("shorter than its header or its declared length ({have} < {need} bytes)")]
    Short { have: usize, need: usize },
    #[error("declared length {batch_bytes} outside [{HEADER_BYTES}, {BATCH_BYTES_MAX}]")]
    BadLength { batch_bytes: u32 },
    #[error("crc32c mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadCrc { stored: u32, computed: u32 },
    #[error("record count {record_count} outside [1, {RECORD_COUNT_MAX}] (0 only in compaction placeholders)")]
    BadRecordCount { record_count: u32 },
    #[error("malformed record {index}: {what}")]
    BadRecord { index: u32, what: &'static str },
}

/// The header fields storage uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: u64,
    pub term: u64,
    /// The Raft log index of the entry holding this batch.
    pub entry_index: u64,
    pub batch_bytes: u32,
    pub crc: u32,
    pub attributes: u16,
    pub record_count: u32,
    pub first_timestamp_ms: i64,
    pub max_timestamp_ms: i64,
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(b)
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(b)
}

/// Reads the header without checking the CRC. Checks the length fields only.
/// A record count of 0 is accepted: compaction leaves such a header-only
/// batch where it removed every record of a segment's last batch (it keeps
/// the segment's last base offset and term). Appends refuse it.
pub fn header(buf: &[u8]) -> Result<BatchHeader, BatchError> {
    if buf.len() < HEADER_BYTES {
        return Err(BatchError::Short {
            have: buf.len(),
            need: HEADER_BYTES,
        });
    }
    let batch_bytes = u32_at(buf, BATCH_BYTES_AT);
    if (batch_bytes as usize) < HEADER_BYTES || batch_bytes as usize > BATCH_BYTES_MAX {
        return Err(BatchError::BadLength { batch_bytes });
    }
    let record_count = u32_at(buf, RECORD_COUNT_AT);
    if record_count > RECORD_COUNT_MAX {
        return Err(BatchError::BadRecordCount { record_count });
    }
    Ok(BatchHeader {
        base_offset: u64_at(buf, BASE_OFFSET_AT),
        term: u64_at(buf, TERM_AT),
        entry_index: u64_at(buf, ENTRY_INDEX_AT),
        batch_bytes,
        crc: u32_at(buf, CRC_AT),
        attributes: u16::from_le_bytes([buf[ATTRIBUTES_AT], buf[ATTRIBUTES_AT + 1]]),
        record_count,
        first_timestamp_ms: u64_at(buf, FIRST_TIMESTAMP_AT) as i64,
        max_timestamp_ms: u64_at(buf, MAX_TIMESTAMP_AT) as i64,
    })
}

/// Reads the header of the batch at the start of `buf` and verifies its CRC.
pub fn check(buf: &[u8]) -> Result<BatchHeader, BatchError> {
    let h = header(buf)?;
    let len = h.batch_bytes as usize;
    if buf.len() < len {
        return Err(BatchError::Short {
            have: buf.len(),
            need: len,
        });
    }
    let computed = crc32c::crc32c(&buf[CRC_FROM..len]);
    if computed != h.crc {
        return Err(BatchError::BadCrc {
            stored: h.crc,
            computed,
        });
    }
    Ok(h)
}

/// Stamps base offset, term and entry index (outside the CRC, so it stays
/// valid).
pub fn stamp(buf: &mut [u8], base_offset: u64, term: u64, entry_index: u64) {
    buf[BASE_OFFSET_AT..BASE_OFFSET_AT + 8].copy_from_slice(&base_offset.to_le_bytes());
    buf[TERM_AT..TERM_AT + 8].copy_from_slice(&term.to_le_bytes());
    buf[ENTRY_INDEX_AT..ENTRY_INDEX_AT + 8].copy_from_slice(&entry_index.to_le_bytes());
}

/// One record, borrowed from its batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub offset_delta: u64,
    pub timestamp_delta: i64,
    pub key: Option<&'a [u8]>,
    /// `None` is a tombstone.
    pub value: Option<&'a [u8]>,
    /// The whole encoded record, length prefix included.
    pub raw: &'a [u8],
}

fn varint(buf: &[u8], at: &mut usize) -> Option<u64> {
    let mut v: u64 = 0;
    for i in 0..VARINT_BYTES_MAX {
        let b = *buf.get(*at)?;
        *at += 1;
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn bytes_field<'a>(buf: &'a [u8], at: &mut usize) -> Option<Option<&'a [u8]>> {
    let n = varint(buf, at)?;
    if n == 0 {
        return Some(None);
    }
    let len = usize::try_from(n - 1).ok()?;
    let end = at.checked_add(len)?;
    let s = buf.get(*at..end)?;
    *at = end;
    Some(Some(s))
}

fn parse_record(rec: &[u8], body_from: usize) -> Option<Record<'_>> {
    let mut at = body_from;
    let _attributes = *rec.get(at)?;
    at += 1;
    let ts = varint(rec, &mut at)?;
    let timestamp_delta = ((ts >> 1) as i64) ^ -((ts & 1) as i64);
    let offset_delta = varint(rec, &mut at)?;
    let key = bytes_field(rec, &mut at)?;
    let value = bytes_field(rec, &mut at)?;
    let header_count = varint(rec, &mut at)?;
    if header_count > RECORD_HEADER_COUNT_MAX {
        return None;
    }
    for _ in 0..header_count {
        let klen = usize::try_from(varint(rec, &mut at)?).ok()?;
        at = at.checked_add(klen)?;
        bytes_field(rec, &mut at)?;
    }
    if at != rec.len() {
        return None;
    }
    Some(Record {
        offset_delta,
        timestamp_delta,
        key,
        value,
        raw: rec,
    })
}

/// The records of a batch (whose header has been checked).
pub fn records(batch: &[u8]) -> Records<'_> {
    let len = header(batch)
        .map(|h| h.batch_bytes as usize)
        .unwrap_or(0)
        .min(batch.len());
    Records {
        buf: &batch[..len],
        at: HEADER_BYTES.min(len),
        index: 0,
    }
}

/// Iterator over a batch's records; yields an error and stops on a malformed one.
pub struct Records<'a> {
    buf: &'a [u8],
    at: usize,
    index: u32,
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<Record<'a>, BatchError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.at >= self.buf.len() {
            return None;
        }
        let index = self.index;
        self.index += 1;
        let start = self.at;
        let mut at = start;
        let bad = |what| Some(Err(BatchError::BadRecord { index, what }));
        let Some(n) = varint(self.buf, &mut at) else {
            self.at = self.buf.len();
            return bad("length varint");
        };
        let end = usize::try_from(n).ok().and_then(|n| at.checked_add(n));
        let Some(end) = end.filter(|&e| e <= self.buf.len()) else {
            self.at = self.buf.len();
            return bad("length past the batch end");
        };
        self.at = end;
        match parse_record(&self.buf[start..end], at - start) {
            Some(r) => Some(Ok(r)),
            None => {
                self.at = self.buf.len();
                bad("fields do not add up to its length")
            }
        }
    }
}

/// Offset delta of the last record, `None` for a batch without records or
/// with a malformed record. Walks the length prefixes of the records, so it
/// costs one varint per record; used only where a compacted batch's real
/// extent matters (its records may have gaps, so `base + record_count` can
/// be short of it).
pub fn last_offset_delta(batch: &[u8]) -> Option<u64> {
    let mut last = None;
    for r in records(batch) {
        last = Some(r.ok()?.offset_delta);
    }
    last
}

/// Builds a batch from already-encoded records, keeping `template`'s header
/// (offsets, term, entry index, attributes, timestamps) and fixing length, count and CRC. Used by
/// compaction to rewrite a batch with fewer records.
pub fn rebuild(template: &[u8], raw_records: &[&[u8]]) -> Vec<u8> {
    let body: usize = raw_records.iter().map(|r| r.len()).sum();
    let mut out = Vec::with_capacity(HEADER_BYTES + body);
    out.extend_from_slice(&template[..HEADER_BYTES]);
    for r in raw_records {
        out.extend_from_slice(r);
    }
    finish(&mut out, raw_records.len() as u32);
    out
}

fn finish(out: &mut [u8], record_count: u32) {
    let len = out.len() as u32;
    out[BATCH_BYTES_AT..BATCH_BYTES_AT + 4].copy_from_slice(&len.to_le_bytes());
    out[RECORD_COUNT_AT..RECORD_COUNT_AT + 4].copy_from_slice(&record_count.to_le_bytes());
    let crc = crc32c::crc32c(&out[CRC_FROM..]);
    out[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
}

/// A record to encode with [`build`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRecord {
    pub key: Option<Vec<u8>>,
    /// `None` encodes a tombstone.
    pub value: Option<Vec<u8>>,
}

/// Encodes a batch in this layout (offset and term zero until stamped).
/// Stands in for the producer's encoder in tests and benchmarks.
pub fn build(records: &[NewRecord], first_timestamp_ms: i64) -> Vec<u8> {
    let mut out = vec![0u8; HEADER_BYTES];
    out[MAGIC_AT] = MAGIC;
    out[FIRST_TIMESTAMP_AT..FIRST_TIMESTAMP_AT + 8]
        .copy_from_slice(&first_timestamp_ms.to_le_bytes());
    out[MAX_TIMESTAMP_AT..MAX_TIMESTAMP_AT + 8].copy_from_slice(&first_timestamp_ms.to_le_bytes());
    let mut rec = Vec::new();
    for (i, r) in records.iter().enumerate() {
        rec.clear();
        rec.push(0); // attributes
        put_varint(&mut rec, 0); // timestamp delta 0, zigzag
        put_varint(&mut rec, i as u64);
        for f in [&r.key, &r.value] {
            match f {
                None => put_varint(&mut rec, 0),
                Some(b) => {
                    put_varint(&mut rec, b.len() as u64 + 1);
                    rec.extend_from_slice(b);
                }
            }
        }
        put_varint(&mut rec, 0); // no headers
        put_varint(&mut out, rec.len() as u64);
        out.extend_from_slice(&rec);
    }
    finish(&mut out, records.len() as u32);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(k: &str, v: Option<&str>) -> NewRecord {
        NewRecord {
            key: Some(k.into()),
            value: v.map(|v| v.as_bytes().to_vec()),
        }
    }

    #[test]
    fn build_check_stamp_round_trip() {
        let mut b = build(&[rec("a", Some("1")), rec("b", None)], 1000);
        let h = check(&b).unwrap();
        assert_eq!(
            (h.record_count, h.first_timestamp_ms, h.batch_bytes as usize),
            (2, 1000, b.len())
        );
        stamp(&mut b, 77, 5, 9);
        let h = check(&b).unwrap();
        assert_eq!((h.base_offset, h.term, h.entry_index), (77, 5, 9));
        assert_eq!(h.attributes, 0);
        let rs: Vec<_> = records(&b).map(|r| r.unwrap()).collect();
        assert_eq!(rs[0].key, Some(&b"a"[..]));
        assert_eq!(rs[0].value, Some(&b"1"[..]));
        assert_eq!((rs[1].offset_delta, rs[1].value), (1, None));
    }

    #[test]
    fn corrupt_byte_fails_crc_and_rebuild_keeps_offsets() {
        let mut b = build(&[rec("a", Some("1")), rec("b", Some("2"))], 0);
        let raws: Vec<Vec<u8>> = records(&b).map(|r| r.unwrap().raw.to_vec()).collect();
        stamp(&mut b, 10, 2, 33);
        let r = rebuild(&b, &[&raws[1]]);
        let h = check(&r).unwrap();
        assert_eq!(h.record_count, 1);
        assert_eq!((h.base_offset, h.term, h.entry_index), (10, 2, 33));
        assert_eq!(records(&r).next().unwrap().unwrap().offset_delta, 1);
        let last = b.len() - 1;
        b[last] ^= 1;
        assert!(matches!(check(&b), Err(BatchError::BadCrc { .. })));
    }

    #[test]
    fn wire_golden_batches_read_the_same_here() {
        // `wire::batch` describes the same layout: its golden files must
        // parse here with the same header fields.
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../wire/tests/golden/");
        let b = std::fs::read(format!("{dir}record_batch.bin")).unwrap();
        let h = check(&b).unwrap();
        assert_eq!(
            (h.base_offset, h.term, h.entry_index, h.record_count),
            (4096, 3, 12, 3)
        );
        assert_eq!(
            (h.first_timestamp_ms, h.max_timestamp_ms),
            (1_700_000_000_000, 1_700_000_000_005)
        );
        assert_eq!((h.batch_bytes as usize, h.attributes), (b.len(), 0));
        assert_eq!(b[MAGIC_AT], MAGIC);
        assert_eq!(records(&b).count(), 3);
        let c = std::fs::read(format!("{dir}control_batch.bin")).unwrap();
        let h = check(&c).unwrap();
        assert_eq!((h.entry_index, h.record_count), (13, 1));
        assert_eq!(h.attributes, attributes::CONTROL);
        let r = records(&c).next().unwrap().unwrap();
        assert_eq!((r.key, r.value), (None, Some(&b"no-op"[..])));
    }

    #[test]
    fn truncated_record_is_reported_not_panicking() {
        let mut b = build(&[rec("key", Some("value"))], 0);
        b[HEADER_BYTES] = 0x7f; // record claims more bytes than the batch has
        let r: Vec<_> = records(&b).collect();
        assert!(matches!(r[0], Err(BatchError::BadRecord { .. })));
    }
}
