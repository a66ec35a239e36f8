//! Batches for the tests, built and read with `wire::batch`, the one parser
//! of the batch format.

#[allow(unused_imports)] // each test binary uses its own share
pub use wire::batch::{
    check, header, rebuild, stamp, BatchError, BatchHeader, BATCH_HEADER_BYTES as HEADER_BYTES,
};

/// A record for [`build`]: owned key and value (`None` value: a tombstone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRecord {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
}

/// Encodes `records` as one batch, every record at `timestamp_ms` (offset,
/// term and entry index zero until stamped).
pub fn build(records: &[NewRecord], timestamp_ms: i64) -> Vec<u8> {
    let mut b = wire::RecordBatchBuilder::new();
    for r in records {
        b.push(wire::NewRecord {
            timestamp_ms,
            key: r.key.as_deref(),
            value: r.value.as_deref(),
            headers: &[],
        });
    }
    b.finish()
}

/// The records of a batch; nothing for a batch whose header is refused.
pub fn records(batch: &[u8]) -> impl Iterator<Item = Result<wire::Record<'_>, wire::WireError>> {
    wire::RecordBatch::parse_without_crc(batch)
        .map(|b| b.records())
        .into_iter()
        .flatten()
}
