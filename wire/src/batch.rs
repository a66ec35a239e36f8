//! Record batches: the bytes a producer encodes, the log stores and fetch
//! returns, unchanged.
//!
//! Header (72 bytes, little-endian):
//!
//! | offset | size | field                                                   |
//! |-------:|-----:|---------------------------------------------------------|
//! |      0 |    8 | base offset (stamped by the leader)                     |
//! |      8 |    8 | Raft term (stamped by the leader)                       |
//! |     16 |    8 | entry index: the Raft log index of the entry holding    |
//! |        |      | this batch (stamped by each replica as it persists it)  |
//! |     24 |    4 | `batch_bytes`: whole batch length, header included      |
//! |     28 |    4 | crc32c over bytes `[32, batch_bytes)`                   |
//! |     32 |    1 | magic = [`BATCH_MAGIC`]                                 |
//! |     33 |    1 | reserved, 0                                             |
//! |     34 |    2 | attributes ([`attributes`])                             |
//! |     36 |    4 | record count                                            |
//! |     40 |    8 | first timestamp (ms since the Unix epoch)               |
//! |     48 |    8 | max timestamp (ms)                                      |
//! |     56 |    8 | producer id (-1: not idempotent)                        |
//! |     64 |    2 | producer epoch                                          |
//! |     66 |    2 | reserved, 0                                             |
//! |     68 |    4 | base sequence (idempotent producer)                     |
//!
//! The CRC starts at byte 32, so base offset, term and entry index are
//! patched in place ([`set_base_offset`], [`set_term`], [`set_entry_index`])
//! without touching the records or recomputing the CRC.
//!
//! A *control batch* ([`attributes::CONTROL`], built by
//! [`encode_control_batch`]) is a normal, CRC'd batch holding exactly one
//! record whose value is an opaque control payload (Raft no-op and
//! membership entries, controller commands). It takes one offset like any
//! record; consumers skip it.
//!
//! Each record, after the header:
//! `varint record_bytes` (bytes after this varint), `u8 attributes`,
//! `zigzag timestamp_delta` (from the first timestamp), `varint offset_delta`,
//! `varint key_len+1` (0 = null key), key, `varint value_len+1` (0 = null
//! value, a tombstone), value, `varint header_count`, then per header
//! `varint key_len`, key, `varint value_len+1`, value. Varints are unsigned
//! LEB128 of at most 10 bytes; zigzag maps signed to unsigned.

use crate::error::{Result, WireError};

/// Size of the batch header.
pub const BATCH_HEADER_BYTES: usize = 72;
/// The batch format version.
pub const BATCH_MAGIC: u8 = 2;
/// The producer id of a batch that is not idempotent.
pub const NO_PRODUCER_ID: i64 = -1;
/// Largest batch in this format: 16 MiB, so a batch always fits a storage
/// segment (segments are at least 1 MiB larger) and one append copies at
/// most 16 MiB. Frames are smaller still by default (4 MiB).
pub const BATCH_BYTES_MAX: usize = 16 << 20;
/// Most records a batch may claim: one per byte at worst (each record takes
/// at least 7 bytes, so this is loose but bounded).
pub const RECORD_COUNT_MAX: u32 = BATCH_BYTES_MAX as u32;
/// Largest LEB128 encoding of a u64.
const VARINT_BYTES_MAX: usize = 10;

/// Attribute bits.
pub mod attributes {
    /// Bits 0..=2: compression codec. Only 0 (none) is defined.
    pub const COMPRESSION_MASK: u16 = 0b111;
    /// Bit 3: timestamps are the broker's append time, not the producer's.
    pub const LOG_APPEND_TIME: u16 = 1 << 3;
    /// Bit 4: a control batch: exactly one record, whose value is an opaque
    /// control payload for the broker (see [`super::encode_control_batch`]).
    /// It takes one offset; consumers skip it.
    pub const CONTROL: u16 = 1 << 4;
}

/// Header field positions.
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
const PRODUCER_ID_AT: usize = 56;
const PRODUCER_EPOCH_AT: usize = 64;
const BASE_SEQUENCE_AT: usize = 68;

fn invalid(msg: impl Into<String>) -> WireError {
    WireError::InvalidBatch(msg.into())
}

/// Why a batch's header (or its CRC) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("shorter than its header or its declared length ({have} < {need} bytes)")]
    Short { have: usize, need: usize },
    #[error("declared length {batch_bytes} outside [{BATCH_HEADER_BYTES}, {BATCH_BYTES_MAX}]")]
    BadLength { batch_bytes: u32 },
    #[error("magic {magic} (expected {BATCH_MAGIC})")]
    BadMagic { magic: u8 },
    #[error("crc32c mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadCrc { stored: u32, computed: u32 },
    #[error("record count {record_count} outside [1, {RECORD_COUNT_MAX}] (0 only in compaction placeholders)")]
    BadRecordCount { record_count: u32 },
}

impl From<BatchError> for WireError {
    fn from(e: BatchError) -> WireError {
        WireError::InvalidBatch(e.to_string())
    }
}

/// A batch header's fields, read by [`header`] or [`check`].
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

/// Reads the header at the front of `buf` without checking the CRC or that
/// the whole batch is there: checks the length field (within
/// `[BATCH_HEADER_BYTES, BATCH_BYTES_MAX]`), the magic and the record count.
/// A record count of 0 is accepted: storage's compaction leaves such a
/// header-only batch where it removed every record of a segment's last
/// batch; appends refuse it.
pub fn header(buf: &[u8]) -> std::result::Result<BatchHeader, BatchError> {
    if buf.len() < BATCH_HEADER_BYTES {
        return Err(BatchError::Short {
            have: buf.len(),
            need: BATCH_HEADER_BYTES,
        });
    }
    let batch_bytes = le_u32(buf, BATCH_BYTES_AT);
    if (batch_bytes as usize) < BATCH_HEADER_BYTES || batch_bytes as usize > BATCH_BYTES_MAX {
        return Err(BatchError::BadLength { batch_bytes });
    }
    if buf[MAGIC_AT] != BATCH_MAGIC {
        return Err(BatchError::BadMagic {
            magic: buf[MAGIC_AT],
        });
    }
    let record_count = le_u32(buf, RECORD_COUNT_AT);
    if record_count > RECORD_COUNT_MAX {
        return Err(BatchError::BadRecordCount { record_count });
    }
    Ok(BatchHeader {
        base_offset: le_u64(buf, 0),
        term: le_u64(buf, 8),
        entry_index: le_u64(buf, ENTRY_INDEX_AT),
        batch_bytes,
        crc: le_u32(buf, CRC_AT),
        attributes: u16::from_le_bytes([buf[ATTRIBUTES_AT], buf[ATTRIBUTES_AT + 1]]),
        record_count,
        first_timestamp_ms: le_u64(buf, FIRST_TIMESTAMP_AT) as i64,
        max_timestamp_ms: le_u64(buf, MAX_TIMESTAMP_AT) as i64,
    })
}

/// [`header`], then that the whole batch is there and its crc32c matches.
pub fn check(buf: &[u8]) -> std::result::Result<BatchHeader, BatchError> {
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

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}
fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// Writes the base offset into an encoded batch's header.
///
/// # Panics
/// If `batch` is shorter than the header (a programmer error: only batches
/// that passed [`RecordBatch::parse`] are patched).
pub fn set_base_offset(batch: &mut [u8], base_offset: u64) {
    batch[0..8].copy_from_slice(&base_offset.to_le_bytes());
}

/// Writes the Raft term into an encoded batch's header. Panics as
/// [`set_base_offset`].
pub fn set_term(batch: &mut [u8], term: u64) {
    batch[8..16].copy_from_slice(&term.to_le_bytes());
}

/// Writes the Raft entry index into an encoded batch's header (outside the
/// CRC, like base offset and term). Panics as [`set_base_offset`].
pub fn set_entry_index(batch: &mut [u8], entry_index: u64) {
    batch[ENTRY_INDEX_AT..ENTRY_INDEX_AT + 8].copy_from_slice(&entry_index.to_le_bytes());
}

/// Stamps base offset, term and entry index at once (all outside the CRC).
/// Panics as [`set_base_offset`].
pub fn stamp(batch: &mut [u8], base_offset: u64, term: u64, entry_index: u64) {
    set_base_offset(batch, base_offset);
    set_term(batch, term);
    set_entry_index(batch, entry_index);
}

/// The total length of the batch starting at `bytes`, once its first 28 bytes
/// are there. For streaming: says how many bytes to wait for.
pub fn peek_batch_bytes(bytes: &[u8]) -> Option<u32> {
    (bytes.len() >= BATCH_BYTES_AT + 4).then(|| le_u32(bytes, BATCH_BYTES_AT))
}

/// The attribute bits of the batch starting at `bytes` ([`attributes`]),
/// once its header is there; nothing is validated.
pub fn batch_attributes(bytes: &[u8]) -> Option<u16> {
    (bytes.len() >= BATCH_HEADER_BYTES)
        .then(|| u16::from_le_bytes([bytes[ATTRIBUTES_AT], bytes[ATTRIBUTES_AT + 1]]))
}

/// Encodes a control batch ([`attributes::CONTROL`]): one record without key
/// or headers whose value is `payload` (opaque to this crate), timestamp
/// `timestamp_ms`. Base offset, term and entry index are 0 until stamped.
pub fn encode_control_batch(payload: &[u8], timestamp_ms: i64) -> Vec<u8> {
    let mut b = RecordBatchBuilder::with_capacity(payload.len() + 16);
    b.attributes = attributes::CONTROL;
    b.push(NewRecord {
        timestamp_ms,
        key: None,
        value: Some(payload),
        headers: &[],
    });
    b.finish()
}

/// Builds a batch from already-encoded records ([`Record::raw`]), keeping
/// `template`'s header (offsets, term, entry index, attributes, timestamps,
/// producer) and fixing length, record count and CRC. Storage's compaction
/// rewrites a batch with fewer records this way; the records keep their
/// offset deltas, so the batch may have gaps.
///
/// # Panics
/// If `template` is shorter than the header (only a checked batch is a template).
pub fn rebuild(template: &[u8], raw_records: &[&[u8]]) -> Vec<u8> {
    let body: usize = raw_records.iter().map(|r| r.len()).sum();
    let mut out = Vec::with_capacity(BATCH_HEADER_BYTES + body);
    out.extend_from_slice(&template[..BATCH_HEADER_BYTES]);
    for r in raw_records {
        out.extend_from_slice(r);
    }
    let len = out.len() as u32;
    out[BATCH_BYTES_AT..BATCH_BYTES_AT + 4].copy_from_slice(&len.to_le_bytes());
    out[RECORD_COUNT_AT..RECORD_COUNT_AT + 4]
        .copy_from_slice(&(raw_records.len() as u32).to_le_bytes());
    let crc = crc32c::crc32c(&out[CRC_FROM..]);
    out[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
    out
}

// ---- varints --------------------------------------------------------------

/// Appends `value` as unsigned LEB128.
pub fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}
fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// A cursor over untrusted bytes: every read checks what remains.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn u8(&mut self) -> Result<u8> {
        let b = *self
            .bytes
            .get(self.pos)
            .ok_or_else(|| invalid("record truncated"))?;
        self.pos += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64> {
        let mut value = 0u64;
        for i in 0..VARINT_BYTES_MAX {
            let b = self.u8()?;
            let part = u64::from(b & 0x7f);
            if i == VARINT_BYTES_MAX - 1 && part > 1 {
                return Err(invalid("varint overflows 64 bits"));
            }
            value |= part << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(invalid("varint longer than 10 bytes"))
    }

    /// A length, checked against the bytes that remain before anything uses it.
    fn len(&mut self, what: &str) -> Result<usize> {
        let n = self.varint()?;
        if n > self.remaining() as u64 {
            return Err(invalid(format!(
                "{what} length {n} exceeds the {} bytes left",
                self.remaining()
            )));
        }
        Ok(n as usize)
    }

    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        s
    }

    /// `varint len+1` then bytes; 0 means null.
    fn nullable(&mut self, what: &str) -> Result<Option<&'a [u8]>> {
        let n = self.varint()?;
        if n == 0 {
            return Ok(None);
        }
        let n = n - 1;
        if n > self.remaining() as u64 {
            return Err(invalid(format!(
                "{what} length {n} exceeds the {} bytes left",
                self.remaining()
            )));
        }
        Ok(Some(self.bytes(n as usize)))
    }
}

// ---- records --------------------------------------------------------------

/// One record header (key, optional value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    pub key: &'a [u8],
    pub value: Option<&'a [u8]>,
}

/// One record as read from a batch, borrowing the batch's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    /// `base_offset + offset_delta` of the batch it came from.
    pub offset: u64,
    /// The offset relative to the batch's base offset.
    pub offset_delta: u64,
    pub timestamp_ms: i64,
    pub key: Option<&'a [u8]>,
    /// None for a tombstone.
    pub value: Option<&'a [u8]>,
    pub headers: Vec<Header<'a>>,
    /// The whole encoded record, its length prefix included (what
    /// [`rebuild`] takes).
    pub raw: &'a [u8],
}

/// A record to encode.
#[derive(Debug, Clone, Copy, Default)]
pub struct NewRecord<'a> {
    pub timestamp_ms: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: &'a [Header<'a>],
}

// ---- builder --------------------------------------------------------------

/// Encodes records into one batch.
#[derive(Debug)]
pub struct RecordBatchBuilder {
    buf: Vec<u8>,
    record_count: u32,
    first_timestamp_ms: Option<i64>,
    max_timestamp_ms: i64,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    attributes: u16,
    scratch: Vec<u8>,
}

impl Default for RecordBatchBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl RecordBatchBuilder {
    pub fn new() -> Self {
        Self::with_capacity(0)
    }

    pub fn with_capacity(bytes: usize) -> Self {
        let mut buf = Vec::with_capacity(BATCH_HEADER_BYTES + bytes);
        buf.resize(BATCH_HEADER_BYTES, 0);
        RecordBatchBuilder {
            buf,
            record_count: 0,
            first_timestamp_ms: None,
            max_timestamp_ms: i64::MIN,
            producer_id: NO_PRODUCER_ID,
            producer_epoch: 0,
            base_sequence: 0,
            attributes: 0,
            scratch: Vec::new(),
        }
    }

    /// Marks the batch as sent by an idempotent producer.
    pub fn producer(mut self, id: i64, epoch: i16, base_sequence: i32) -> Self {
        self.producer_id = id;
        self.producer_epoch = epoch;
        self.base_sequence = base_sequence;
        self
    }

    pub fn record_count(&self) -> u32 {
        self.record_count
    }

    /// Bytes of the batch if finished now.
    pub fn encoded_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Appends one record.
    pub fn push(&mut self, record: NewRecord<'_>) {
        let first = *self.first_timestamp_ms.get_or_insert(record.timestamp_ms);
        self.max_timestamp_ms = self.max_timestamp_ms.max(record.timestamp_ms);
        let body = &mut self.scratch;
        body.clear();
        body.push(0); // record attributes: none defined
        put_varint(body, zigzag(record.timestamp_ms.wrapping_sub(first)));
        put_varint(body, u64::from(self.record_count));
        put_nullable(body, record.key);
        put_nullable(body, record.value);
        put_varint(body, record.headers.len() as u64);
        for h in record.headers {
            put_varint(body, h.key.len() as u64);
            body.extend_from_slice(h.key);
            put_nullable(body, h.value);
        }
        put_varint(&mut self.buf, body.len() as u64);
        self.buf.extend_from_slice(body);
        self.record_count += 1;
    }

    /// Writes the header and CRC; base offset, term and entry index are 0
    /// until they are stamped.
    pub fn finish(mut self) -> Vec<u8> {
        let len = self.buf.len() as u32;
        let first = self.first_timestamp_ms.unwrap_or(0);
        let max = if self.record_count == 0 {
            first
        } else {
            self.max_timestamp_ms
        };
        let h = &mut self.buf[..BATCH_HEADER_BYTES];
        h[BATCH_BYTES_AT..BATCH_BYTES_AT + 4].copy_from_slice(&len.to_le_bytes());
        h[MAGIC_AT] = BATCH_MAGIC;
        h[ATTRIBUTES_AT..ATTRIBUTES_AT + 2].copy_from_slice(&self.attributes.to_le_bytes());
        h[RECORD_COUNT_AT..RECORD_COUNT_AT + 4].copy_from_slice(&self.record_count.to_le_bytes());
        h[FIRST_TIMESTAMP_AT..FIRST_TIMESTAMP_AT + 8].copy_from_slice(&first.to_le_bytes());
        h[MAX_TIMESTAMP_AT..MAX_TIMESTAMP_AT + 8].copy_from_slice(&max.to_le_bytes());
        h[PRODUCER_ID_AT..PRODUCER_ID_AT + 8].copy_from_slice(&self.producer_id.to_le_bytes());
        h[PRODUCER_EPOCH_AT..PRODUCER_EPOCH_AT + 2]
            .copy_from_slice(&self.producer_epoch.to_le_bytes());
        h[BASE_SEQUENCE_AT..BASE_SEQUENCE_AT + 4]
            .copy_from_slice(&self.base_sequence.to_le_bytes());
        let crc = crc32c::crc32c(&self.buf[CRC_FROM..]);
        self.buf[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
        self.buf
    }
}

fn put_nullable(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => put_varint(out, 0),
        Some(b) => {
            put_varint(out, b.len() as u64 + 1);
            out.extend_from_slice(b);
        }
    }
}

// ---- reading --------------------------------------------------------------

/// A validated view of one batch.
#[derive(Debug, Clone, Copy)]
pub struct RecordBatch<'a> {
    bytes: &'a [u8],
    header: BatchHeader,
}

impl<'a> RecordBatch<'a> {
    /// Parses the batch at the front of `bytes`: checks the length fields,
    /// magic and crc32c. The records are checked as they are iterated (or all
    /// at once by [`RecordBatch::validate_records`]).
    pub fn parse(bytes: &'a [u8]) -> Result<RecordBatch<'a>> {
        check(bytes)?;
        Self::parse_without_crc(bytes)
    }

    /// As [`RecordBatch::parse`] without the crc32c pass: the length fields,
    /// magic and record count are checked ([`header`]), and records stay
    /// bounds-checked as they are read. Only for a caller that verifies the
    /// CRC itself before it trusts or stores the bytes (the broker's produce
    /// path: storage checks the CRC on append, so the batch is hashed once,
    /// not twice).
    pub fn parse_without_crc(bytes: &'a [u8]) -> Result<RecordBatch<'a>> {
        let header = header(bytes)?;
        let len = header.batch_bytes as usize;
        if len > bytes.len() {
            return Err(BatchError::Short {
                have: bytes.len(),
                need: len,
            }
            .into());
        }
        Ok(RecordBatch {
            bytes: &bytes[..len],
            header,
        })
    }

    /// The header's fields at once.
    pub fn header(&self) -> BatchHeader {
        self.header
    }

    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }
    pub fn batch_bytes(&self) -> usize {
        self.bytes.len()
    }
    pub fn base_offset(&self) -> u64 {
        le_u64(self.bytes, 0)
    }
    pub fn term(&self) -> u64 {
        le_u64(self.bytes, 8)
    }
    /// The Raft log index of the entry holding this batch (0 until stamped).
    pub fn entry_index(&self) -> u64 {
        le_u64(self.bytes, ENTRY_INDEX_AT)
    }
    pub fn crc(&self) -> u32 {
        le_u32(self.bytes, CRC_AT)
    }
    pub fn attributes(&self) -> u16 {
        u16::from_le_bytes([self.bytes[ATTRIBUTES_AT], self.bytes[ATTRIBUTES_AT + 1]])
    }
    /// A control batch ([`attributes::CONTROL`]): consumers skip it.
    pub fn is_control(&self) -> bool {
        self.attributes() & attributes::CONTROL != 0
    }
    /// The payload of a control batch: its one record's value. `None` for a
    /// data batch or a control batch that is not one valued record.
    pub fn control_payload(&self) -> Option<&'a [u8]> {
        if !self.is_control() || self.record_count() != 1 {
            return None;
        }
        self.records().next()?.ok()?.value
    }
    pub fn record_count(&self) -> u32 {
        le_u32(self.bytes, RECORD_COUNT_AT)
    }
    /// Offset of the last record if offsets are contiguous (not compacted).
    pub fn last_offset(&self) -> u64 {
        self.base_offset() + u64::from(self.record_count().saturating_sub(1))
    }
    pub fn first_timestamp_ms(&self) -> i64 {
        le_u64(self.bytes, FIRST_TIMESTAMP_AT) as i64
    }
    pub fn max_timestamp_ms(&self) -> i64 {
        le_u64(self.bytes, MAX_TIMESTAMP_AT) as i64
    }
    pub fn producer_id(&self) -> i64 {
        le_u64(self.bytes, PRODUCER_ID_AT) as i64
    }
    pub fn producer_epoch(&self) -> i16 {
        i16::from_le_bytes([
            self.bytes[PRODUCER_EPOCH_AT],
            self.bytes[PRODUCER_EPOCH_AT + 1],
        ])
    }
    pub fn base_sequence(&self) -> i32 {
        le_u32(self.bytes, BASE_SEQUENCE_AT) as i32
    }

    /// The records, each checked against the bytes that remain.
    pub fn records(&self) -> RecordIter<'a> {
        RecordIter {
            cursor: Cursor {
                bytes: &self.bytes[BATCH_HEADER_BYTES..],
                pos: 0,
            },
            base_offset: self.base_offset(),
            first_timestamp_ms: self.first_timestamp_ms(),
            left: self.record_count(),
            failed: false,
        }
    }

    /// The offset of the last record, read from the records themselves (a
    /// compacted batch may have gaps, so `base + record_count - 1` can be
    /// short of it); `None` for a batch without records or with a malformed
    /// one. Costs a pass over the records.
    pub fn last_record_offset(&self) -> Option<u64> {
        let mut last = None;
        for r in self.records() {
            last = Some(r.ok()?.offset);
        }
        last
    }

    /// Checks every record and that the count and length add up exactly.
    pub fn validate_records(&self) -> Result<()> {
        let mut iter = self.records();
        for record in iter.by_ref() {
            record?;
        }
        if iter.cursor.remaining() != 0 {
            return Err(invalid(format!(
                "{} bytes after the last of {} records",
                iter.cursor.remaining(),
                self.record_count()
            )));
        }
        Ok(())
    }
}

/// Iterator over a batch's records. Stops after the first error.
#[derive(Debug)]
pub struct RecordIter<'a> {
    cursor: Cursor<'a>,
    base_offset: u64,
    first_timestamp_ms: i64,
    left: u32,
    failed: bool,
}

impl std::fmt::Debug for Cursor<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Cursor {{ pos: {}, len: {} }}",
            self.pos,
            self.bytes.len()
        )
    }
}

impl<'a> RecordIter<'a> {
    fn next_record(&mut self) -> Result<Record<'a>> {
        let start = self.cursor.pos;
        let len = self.cursor.len("record")?;
        let mut c = Cursor {
            bytes: self.cursor.bytes(len),
            pos: 0,
        };
        let raw = &self.cursor.bytes[start..self.cursor.pos];
        let _attributes = c.u8()?;
        let timestamp_ms = self.first_timestamp_ms.wrapping_add(unzigzag(c.varint()?));
        let offset_delta = c.varint()?;
        let offset = self
            .base_offset
            .checked_add(offset_delta)
            .ok_or_else(|| invalid("offset delta overflows"))?;
        let key = c.nullable("key")?;
        let value = c.nullable("value")?;
        let header_count = c.varint()?;
        // Each header takes at least 2 bytes: bound the count before allocating.
        if header_count > (c.remaining() / 2) as u64 {
            return Err(invalid(format!(
                "header count {header_count} cannot fit in {} bytes",
                c.remaining()
            )));
        }
        let mut headers = Vec::with_capacity(header_count as usize);
        for _ in 0..header_count {
            let klen = c.len("header key")?;
            let key = c.bytes(klen);
            let value = c.nullable("header value")?;
            headers.push(Header { key, value });
        }
        if c.remaining() != 0 {
            return Err(invalid(format!(
                "{} stray bytes at the end of a record",
                c.remaining()
            )));
        }
        Ok(Record {
            offset,
            offset_delta,
            timestamp_ms,
            key,
            value,
            headers,
            raw,
        })
    }
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = Result<Record<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 || self.failed {
            return None;
        }
        self.left -= 1;
        let r = self.next_record();
        self.failed = r.is_err();
        Some(r)
    }
}

/// Iterator over concatenated batches (a fetch response, an AppendEntries
/// payload). Stops after the first error.
#[derive(Debug, Clone)]
pub struct BatchIter<'a> {
    rest: &'a [u8],
    failed: bool,
}

/// Iterates the batches in `bytes`.
pub fn batches(bytes: &[u8]) -> BatchIter<'_> {
    BatchIter {
        rest: bytes,
        failed: false,
    }
}

impl<'a> Iterator for BatchIter<'a> {
    type Item = Result<RecordBatch<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() || self.failed {
            return None;
        }
        match RecordBatch::parse(self.rest) {
            Ok(b) => {
                self.rest = &self.rest[b.batch_bytes()..];
                Some(Ok(b))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_and_zigzag_round_trip_at_the_edges() {
        for v in [0u64, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert!(out.len() <= VARINT_BYTES_MAX);
            assert_eq!(
                Cursor {
                    bytes: &out,
                    pos: 0
                }
                .varint()
                .unwrap(),
                v
            );
        }
        for v in [0i64, -1, 1, i64::MIN, i64::MAX] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
    }

    #[test]
    fn overlong_varints_are_refused() {
        let eleven = [0x80u8; 11];
        assert!(Cursor {
            bytes: &eleven,
            pos: 0
        }
        .varint()
        .is_err());
        let mut overflow = [0xffu8; 10];
        overflow[9] = 0x02; // bit 64
        assert!(Cursor {
            bytes: &overflow,
            pos: 0
        }
        .varint()
        .is_err());
    }

    #[test]
    fn parse_without_crc_skips_only_the_crc() {
        let mut b = RecordBatchBuilder::new();
        b.push(NewRecord {
            timestamp_ms: 5,
            key: None,
            value: Some(b"v"),
            headers: &[],
        });
        let mut bytes = b.finish();
        bytes[CRC_AT] ^= 0xff; // the stored CRC
        assert!(RecordBatch::parse(&bytes).is_err());
        let batch = RecordBatch::parse_without_crc(&bytes).unwrap();
        batch.validate_records().unwrap();
        bytes[BATCH_BYTES_AT..BATCH_BYTES_AT + 4].copy_from_slice(&10u32.to_le_bytes());
        // a length below the header is still refused
        assert!(RecordBatch::parse_without_crc(&bytes).is_err());
    }

    #[test]
    fn leader_patches_offset_and_term_without_breaking_the_crc() {
        let mut b = RecordBatchBuilder::new();
        b.push(NewRecord {
            timestamp_ms: 5,
            key: Some(b"k"),
            value: Some(b"v"),
            headers: &[],
        });
        let mut bytes = b.finish();
        set_base_offset(&mut bytes, 1000);
        set_term(&mut bytes, 7);
        set_entry_index(&mut bytes, 42);
        let batch = RecordBatch::parse(&bytes).unwrap();
        assert_eq!(
            (batch.base_offset(), batch.term(), batch.entry_index()),
            (1000, 7, 42)
        );
        assert_eq!(batch.records().next().unwrap().unwrap().offset, 1000);
        assert!(!batch.is_control());
        assert_eq!(batch.control_payload(), None);
        assert_eq!(peek_batch_bytes(&bytes[..27]), None);
        assert_eq!(peek_batch_bytes(&bytes[..28]), Some(bytes.len() as u32));
    }

    #[test]
    fn control_batches_round_trip() {
        let payload = b"\x01membership: 1,2,3";
        let mut bytes = encode_control_batch(payload, 1_700_000_000_000);
        set_base_offset(&mut bytes, 9);
        set_term(&mut bytes, 4);
        set_entry_index(&mut bytes, 17);
        assert_eq!(batch_attributes(&bytes), Some(attributes::CONTROL));
        assert_eq!(batch_attributes(&bytes[..BATCH_HEADER_BYTES - 1]), None);
        let batch = RecordBatch::parse(&bytes).unwrap();
        batch.validate_records().unwrap();
        assert!(batch.is_control());
        assert_eq!(batch.record_count(), 1);
        assert_eq!(
            (batch.base_offset(), batch.term(), batch.entry_index()),
            (9, 4, 17)
        );
        assert_eq!(batch.control_payload(), Some(&payload[..]));
        let r = batch.records().next().unwrap().unwrap();
        assert_eq!(
            (r.offset, r.key, r.timestamp_ms),
            (9, None, 1_700_000_000_000)
        );
        // An empty payload is still one record (one offset).
        let empty = encode_control_batch(b"", 0);
        let batch = RecordBatch::parse(&empty).unwrap();
        assert_eq!(batch.control_payload(), Some(&b""[..]));
    }
    fn two_records() -> Vec<u8> {
        let mut b = RecordBatchBuilder::new();
        for (k, v) in [(&b"a"[..], Some(&b"1"[..])), (b"b", None)] {
            b.push(NewRecord {
                timestamp_ms: 1000,
                key: Some(k),
                value: v,
                headers: &[],
            });
        }
        b.finish()
    }

    #[test]
    fn check_reads_the_header_and_stamp_keeps_the_crc() {
        let mut b = two_records();
        let h = check(&b).unwrap();
        assert_eq!(
            (h.record_count, h.first_timestamp_ms, h.batch_bytes as usize),
            (2, 1000, b.len())
        );
        stamp(&mut b, 77, 5, 9);
        let h = check(&b).unwrap();
        assert_eq!((h.base_offset, h.term, h.entry_index), (77, 5, 9));
        assert_eq!(RecordBatch::parse(&b).unwrap().header(), h);
        let rs: Vec<_> = RecordBatch::parse(&b)
            .unwrap()
            .records()
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(
            (rs[1].offset, rs[1].offset_delta, rs[1].value),
            (78, 1, None)
        );
        let last = b.len() - 1;
        b[last] ^= 1;
        assert!(matches!(check(&b), Err(BatchError::BadCrc { .. })));
        assert!(RecordBatch::parse(&b).is_err());
    }

    #[test]
    fn rebuild_keeps_the_header_and_the_offset_deltas() {
        let mut b = two_records();
        stamp(&mut b, 10, 2, 33);
        let batch = RecordBatch::parse(&b).unwrap();
        let raws: Vec<&[u8]> = batch.records().map(|r| r.unwrap().raw).collect();
        let r = rebuild(&b, &raws[1..]);
        let h = check(&r).unwrap();
        assert_eq!(h.record_count, 1);
        assert_eq!((h.base_offset, h.term, h.entry_index), (10, 2, 33));
        let rebuilt = RecordBatch::parse(&r).unwrap();
        rebuilt.validate_records().unwrap();
        assert_eq!(rebuilt.last_record_offset(), Some(11));
        // With every record gone the header stays: a compaction placeholder.
        let empty = rebuild(&b, &[]);
        assert_eq!(check(&empty).unwrap().record_count, 0);
        assert_eq!(
            RecordBatch::parse(&empty).unwrap().last_record_offset(),
            None
        );
    }

    #[test]
    fn lengths_over_the_cap_bad_magic_and_short_buffers_are_refused() {
        let b = two_records();
        let mut big = b.clone();
        big[BATCH_BYTES_AT..BATCH_BYTES_AT + 4]
            .copy_from_slice(&(BATCH_BYTES_MAX as u32 + 1).to_le_bytes());
        assert!(matches!(header(&big), Err(BatchError::BadLength { .. })));
        assert!(RecordBatch::parse_without_crc(&big).is_err());
        let mut magic = b.clone();
        magic[MAGIC_AT] = 1;
        assert_eq!(header(&magic), Err(BatchError::BadMagic { magic: 1 }));
        assert!(matches!(
            check(&b[..b.len() - 1]),
            Err(BatchError::Short { .. })
        ));
        assert!(matches!(header(&b[..10]), Err(BatchError::Short { .. })));
    }

    #[test]
    fn a_truncated_record_is_an_error_not_a_panic() {
        let mut b = two_records();
        b[BATCH_HEADER_BYTES] = 0x7f; // the first record claims more bytes than there are
        let batch = RecordBatch::parse_without_crc(&b).unwrap();
        let r: Vec<_> = batch.records().collect();
        assert!(r[0].is_err());
        assert_eq!(r.len(), 1);
        assert_eq!(batch.last_record_offset(), None);
    }
}
