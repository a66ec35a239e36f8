//! Golden byte files for the frame and record batch layouts: an accidental
//! format change (a field moved, a type widened, an rkyv upgrade that changes
//! the archive) fails here. After an intended change, regenerate with
//! `UPDATE_GOLDEN=1 cargo test -p wire --test golden` and say so in the commit.

use std::path::PathBuf;
use wire::*;

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

fn check_golden(name: &str, bytes: &[u8]) {
    let path = golden_path(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, bytes).unwrap();
        return;
    }
    let want = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
    if want != bytes {
        let at = want
            .iter()
            .zip(bytes)
            .position(|(a, b)| a != b)
            .unwrap_or(want.len().min(bytes.len()));
        panic!(
            "{name}: encoding changed at byte {at} (golden {} bytes, now {}); \
             if intended, regenerate with UPDATE_GOLDEN=1",
            want.len(),
            bytes.len()
        );
    }
}

fn golden_batch() -> Vec<u8> {
    let headers = [
        Header {
            key: b"trace",
            value: Some(b"abc"),
        },
        Header {
            key: b"n",
            value: None,
        },
    ];
    let mut b = RecordBatchBuilder::new().producer(77, 2, 1000);
    b.push(NewRecord {
        timestamp_ms: 1_700_000_000_000,
        key: Some(b"user-1"),
        value: Some(b"hello"),
        headers: &headers,
    });
    b.push(NewRecord {
        timestamp_ms: 1_700_000_000_005,
        key: None,
        value: Some(b"world"),
        headers: &[],
    });
    b.push(NewRecord {
        timestamp_ms: 1_699_999_999_990,
        key: Some(b"user-1"),
        value: None,
        headers: &[],
    });
    let mut bytes = b.finish();
    set_base_offset(&mut bytes, 4096);
    set_term(&mut bytes, 3);
    set_entry_index(&mut bytes, 12);
    bytes
}

#[test]
fn record_batch_layout_is_unchanged() {
    let bytes = golden_batch();
    check_golden("record_batch.bin", &bytes);
    // And the stored bytes still read back as the same records.
    let stored = std::fs::read(golden_path("record_batch.bin")).unwrap();
    let batch = RecordBatch::parse(&stored).unwrap();
    assert_eq!(
        (
            batch.base_offset(),
            batch.term(),
            batch.entry_index(),
            batch.record_count()
        ),
        (4096, 3, 12, 3)
    );
    assert!(!batch.is_control());
    assert_eq!(
        (
            batch.producer_id(),
            batch.producer_epoch(),
            batch.base_sequence()
        ),
        (77, 2, 1000)
    );
    assert_eq!(batch.first_timestamp_ms(), 1_700_000_000_000);
    assert_eq!(batch.max_timestamp_ms(), 1_700_000_000_005);
    let records: Vec<Record<'_>> = batch.records().map(|r| r.unwrap()).collect();
    assert_eq!(records[0].key, Some(&b"user-1"[..]));
    assert_eq!(
        records[0].headers[0],
        Header {
            key: b"trace",
            value: Some(b"abc")
        }
    );
    assert_eq!(records[1].key, None);
    assert_eq!(records[2].offset, 4098);
    assert_eq!(records[2].value, None);
    assert_eq!(records[2].timestamp_ms, 1_699_999_999_990);
}

#[test]
fn control_batch_layout_is_unchanged() {
    let mut bytes = encode_control_batch(b"no-op", 1_700_000_000_000);
    set_base_offset(&mut bytes, 4099);
    set_term(&mut bytes, 4);
    set_entry_index(&mut bytes, 13);
    check_golden("control_batch.bin", &bytes);
    let stored = std::fs::read(golden_path("control_batch.bin")).unwrap();
    let batch = RecordBatch::parse(&stored).unwrap();
    assert!(batch.is_control());
    assert_eq!(batch_attributes(&stored), Some(batch::attributes::CONTROL));
    assert_eq!(
        (batch.base_offset(), batch.term(), batch.entry_index()),
        (4099, 4, 13)
    );
    assert_eq!(batch.control_payload(), Some(&b"no-op"[..]));
}

fn golden_produce() -> ProduceRequest {
    ProduceRequest {
        topic: "orders".into(),
        partition: 7,
        acks: Acks::Quorum,
        timeout_ms: 30_000,
        batch: golden_batch(),
    }
}

fn golden_vote() -> VoteRequest {
    VoteRequest {
        group: 0x0102_0304_0506_0708,
        term: 9,
        candidate: 2,
        last_log_index: 1234,
        last_log_term: 8,
        pre_vote: true,
        leadership_transfer: false,
    }
}

fn golden_error() -> ErrorResponse {
    ErrorResponse {
        code: ErrorCode::NotLeader as u16,
        message: "not the leader of orders-7".into(),
        leader_hint: Some(LeaderHint {
            broker: 3,
            shard: 1,
            endpoint: Endpoint {
                host: "127.0.0.1".into(),
                port: 9093,
            },
        }),
    }
}

fn decode_golden(name: &str) -> Frame {
    let bytes = std::fs::read(golden_path(name)).unwrap();
    match parse_frame(&bytes, FrameLimits::default()).unwrap() {
        Parsed::Frame { frame, consumed } => {
            assert_eq!(consumed, bytes.len());
            frame.to_frame()
        }
        Parsed::Incomplete { .. } => panic!("{name} is incomplete"),
    }
}

#[test]
fn frame_layouts_are_unchanged() {
    let limits = FrameLimits::default();
    check_golden(
        "frame_produce.bin",
        &encode(&golden_produce(), 0xAABB_CCDD, limits).unwrap(),
    );
    check_golden(
        "frame_vote.bin",
        &encode(&golden_vote(), 5, limits).unwrap(),
    );
    check_golden(
        "frame_error.bin",
        &encode(&golden_error(), 6, limits).unwrap(),
    );

    let f = decode_golden("frame_produce.bin");
    assert_eq!(f.header.kind, Kind::ProduceRequest);
    assert_eq!(f.header.correlation_id, 0xAABB_CCDD);
    assert_eq!(f.decode::<ProduceRequest>().unwrap(), golden_produce());
    assert_eq!(
        decode_golden("frame_vote.bin")
            .decode::<VoteRequest>()
            .unwrap(),
        golden_vote()
    );
    let e = decode_golden("frame_error.bin")
        .decode::<ErrorResponse>()
        .unwrap();
    assert_eq!(e, golden_error());
    assert_eq!(e.error_code(), ErrorCode::NotLeader);
}

#[test]
fn the_frame_header_is_where_the_docs_say() {
    let bytes = std::fs::read(golden_path("frame_vote.bin")).unwrap();
    assert_eq!(
        u32::from_le_bytes(bytes[0..4].try_into().unwrap()) as usize,
        bytes.len()
    );
    assert_eq!(bytes[8], PROTOCOL_VERSION);
    assert_eq!(
        u16::from_le_bytes([bytes[10], bytes[11]]),
        Kind::VoteRequest as u16
    );
    assert_eq!(u64::from_le_bytes(bytes[16..24].try_into().unwrap()), 5);
}
