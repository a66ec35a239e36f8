//! Every kind of bad input gives a clear error: never a panic, never an
//! allocation beyond the frame limit, never a frame handed out.

use wire::*;

fn limits() -> FrameLimits {
    FrameLimits::default()
}

fn sample_frame() -> Vec<u8> {
    let msg = ProduceRequest {
        topic: "orders".into(),
        partition: 3,
        acks: Acks::Quorum,
        timeout_ms: 5000,
        batch: vec![1, 2, 3, 4],
    };
    encode(&msg, 42, limits()).unwrap().to_vec()
}

/// Rewrites the CRC so that a deliberately damaged header reaches the check
/// after the CRC.
fn reseal(frame: &mut [u8]) {
    let crc = crc32c::crc32c_append(crc32c::crc32c(&frame[0..4]), &frame[8..]);
    frame[4..8].copy_from_slice(&crc.to_le_bytes());
}

fn parse_err(bytes: &[u8]) -> WireError {
    match parse_frame(bytes, limits()) {
        Err(e) => e,
        Ok(p) => panic!("expected an error, got {p:?}"),
    }
}

#[test]
fn a_truncated_frame_is_incomplete_at_every_length_never_an_error() {
    let frame = sample_frame();
    for len in 0..frame.len() {
        match parse_frame(&frame[..len], limits()).unwrap() {
            Parsed::Incomplete { needed } => {
                let want = if len < 4 { 4 - len } else { frame.len() - len };
                assert_eq!(needed, want, "at length {len}");
            }
            Parsed::Frame { .. } => panic!("frame reported whole at {len} bytes"),
        }
    }
}

#[test]
fn an_oversize_length_is_refused_before_the_body_arrives() {
    let mut bytes = (FRAME_BYTES_MAX_DEFAULT + 1).to_le_bytes().to_vec();
    assert!(matches!(parse_err(&bytes), WireError::FrameTooLarge { .. }));
    bytes = u32::MAX.to_le_bytes().to_vec();
    let mut decoder = FrameDecoder::new(limits());
    decoder.extend(&bytes);
    assert!(matches!(
        decoder.next_frame(),
        Err(WireError::FrameTooLarge { .. })
    ));
    // The decoder stays poisoned: the stream cannot be trusted any more.
    decoder.extend(&sample_frame());
    assert!(decoder.next_frame().is_err());
}

#[test]
fn a_configured_smaller_limit_applies_to_decoding_and_encoding() {
    let small = FrameLimits::new(48).unwrap();
    let frame = sample_frame();
    assert!(frame.len() > 48);
    assert!(matches!(
        parse_frame(&frame, small),
        Err(WireError::FrameTooLarge { .. })
    ));
    let big = ProduceRequest {
        topic: "t".into(),
        partition: 0,
        acks: Acks::Leader,
        timeout_ms: 1,
        batch: vec![0; 100],
    };
    assert!(matches!(
        encode(&big, 1, small),
        Err(WireError::Encode { .. })
    ));
    assert!(FrameLimits::new(10).is_err());
    assert!(FrameLimits::new(u32::MAX).is_err());
}

#[test]
fn a_length_below_the_header_is_refused() {
    let mut frame = sample_frame();
    frame[0..4].copy_from_slice(&10u32.to_le_bytes());
    assert!(matches!(
        parse_err(&frame),
        WireError::FrameTooShort { length: 10, .. }
    ));
}

#[test]
fn a_flipped_bit_anywhere_fails_the_crc() {
    let frame = sample_frame();
    for i in 4..frame.len() {
        for bit in [0, 3, 7] {
            let mut bad = frame.clone();
            bad[i] ^= 1 << bit;
            let err = parse_err(&bad);
            assert!(
                matches!(err, WireError::FrameCrcMismatch { .. }),
                "byte {i}: {err}"
            );
        }
    }
}

#[test]
fn unknown_version_kind_and_reserved_bits_are_named_in_the_error() {
    let mut f = sample_frame();
    f[8] = 9;
    reseal(&mut f);
    assert_eq!(
        parse_err(&f),
        WireError::UnsupportedVersion {
            version: 9,
            supported: 1
        }
    );

    let mut f = sample_frame();
    f[10..12].copy_from_slice(&0x7777u16.to_le_bytes());
    reseal(&mut f);
    assert_eq!(parse_err(&f), WireError::UnknownKind { kind: 0x7777 });

    let mut f = sample_frame();
    f[12] = 1;
    reseal(&mut f);
    assert_eq!(parse_err(&f), WireError::ReservedNonZero { value: 1 });
}

fn frame_with_body(kind: Kind, body: &[u8]) -> Frame {
    let mut bytes = vec![0u8; FRAME_HEADER_BYTES];
    bytes.extend_from_slice(body);
    let len = bytes.len() as u32;
    bytes[0..4].copy_from_slice(&len.to_le_bytes());
    bytes[8] = PROTOCOL_VERSION;
    bytes[10..12].copy_from_slice(&(kind as u16).to_le_bytes());
    reseal(&mut bytes);
    match parse_frame(&bytes, limits()).unwrap() {
        Parsed::Frame { frame, .. } => frame.to_frame(),
        Parsed::Incomplete { .. } => unreachable!("whole frame"),
    }
}

#[test]
fn an_invalid_archive_is_refused_with_the_kind_named() {
    // A body that claims a string far beyond its bytes.
    // (Names of more than 8 bytes are stored out of line, behind a pointer.)
    let valid = encode(
        &DescribeTopicRequest {
            name: "orders-and-more".into(),
        },
        1,
        limits(),
    )
    .unwrap();
    let mut body = valid[FRAME_HEADER_BYTES..].to_vec();
    let n = body.len();
    body[n - 4..].copy_from_slice(&i32::MAX.to_le_bytes()); // relative pointer
    let frame = frame_with_body(Kind::DescribeTopicRequest, &body);
    let err = frame.message().unwrap_err();
    assert!(
        matches!(
            err,
            WireError::InvalidBody {
                kind: "DescribeTopicRequest",
                ..
            }
        ),
        "{err}"
    );

    // An empty body for a kind that has fields.
    let err = frame_with_body(Kind::FetchRequest, &[])
        .message()
        .unwrap_err();
    assert!(matches!(err, WireError::InvalidBody { .. }), "{err}");

    // An invalid enum tag (Acks has two variants).
    let valid = sample_frame();
    let body = valid[FRAME_HEADER_BYTES..].to_vec();
    let tag_positions: Vec<usize> = (0..body.len())
        .filter(|&i| body[i] == Acks::Quorum as u8)
        .collect();
    let rejected = tag_positions.iter().any(|&i| {
        let mut b = body.clone();
        b[i] = 0xEE;
        frame_with_body(Kind::ProduceRequest, &b).message().is_err()
    });
    assert!(rejected, "no corrupted tag position was refused");
}

#[test]
fn invalid_utf8_in_a_string_is_refused() {
    let valid = encode(
        &DescribeTopicRequest {
            name: "abcdefghijklmnop".into(),
        },
        1,
        limits(),
    )
    .unwrap();
    let mut body = valid[FRAME_HEADER_BYTES..].to_vec();
    let at = body
        .windows(16)
        .position(|w| w == b"abcdefghijklmnop")
        .expect("string bytes");
    body[at + 5] = 0xff;
    let err = frame_with_body(Kind::DescribeTopicRequest, &body)
        .message()
        .unwrap_err();
    assert!(matches!(err, WireError::InvalidBody { .. }), "{err}");
}

#[test]
fn topic_names_are_checked_where_they_enter() {
    for name in ["../../etc", "a/b", "", "..", "bad\0name"] {
        let frame = encode(
            &CreateTopicRequest {
                name: name.into(),
                partitions: 1,
                replication: 1,
                config: TopicConfig {
                    retention_bytes: None,
                    retention_ms: None,
                    segment_bytes: None,
                    segment_ms: None,
                    cleanup: CleanupPolicy::Delete,
                    durability: Durability::EveryBatch,
                    tombstone_retention_ms: None,
                },
                timeout_ms: 1000,
            },
            1,
            limits(),
        )
        .unwrap();
        let parsed = match parse_frame(&frame, limits()).unwrap() {
            Parsed::Frame { frame, .. } => frame.to_frame(),
            Parsed::Incomplete { .. } => unreachable!(),
        };
        let err = parsed.message().unwrap_err();
        assert!(
            matches!(err, WireError::InvalidField { field: "topic", .. }),
            "{name:?}: {err}"
        );
    }
}

#[test]
fn decoding_as_the_wrong_kind_is_an_error() {
    let bytes = sample_frame();
    let frame = match parse_frame(&bytes, limits()).unwrap() {
        Parsed::Frame { frame, .. } => frame.to_frame(),
        Parsed::Incomplete { .. } => unreachable!(),
    };
    assert!(matches!(
        frame.decode::<FetchRequest>(),
        Err(WireError::KindMismatch { .. })
    ));
    assert_eq!(frame.decode::<ProduceRequest>().unwrap().partition, 3);
}

#[test]
fn a_snapshot_chunk_with_a_bad_crc_or_oversize_data_is_refused() {
    let chunk = InstallSnapshotChunk {
        group: 1,
        term: 2,
        leader: 3,
        snapshot_index: 10,
        snapshot_term: 2,
        offset: 0,
        total_bytes: 100,
        data: vec![7; 100],
        chunk_crc: 0,
        done: true,
    };
    let roundtrip = |c: &InstallSnapshotChunk| {
        let f = encode(c, 1, limits()).unwrap();
        match parse_frame(&f, limits()).unwrap() {
            Parsed::Frame { frame, .. } => frame.to_frame().decode::<InstallSnapshotChunk>(),
            Parsed::Incomplete { .. } => unreachable!(),
        }
    };
    assert!(matches!(
        roundtrip(&chunk),
        Err(WireError::InvalidField {
            field: "chunk_crc",
            ..
        })
    ));
    let sealed = chunk.clone().seal();
    assert_eq!(roundtrip(&sealed).unwrap(), sealed);
    let past_end = InstallSnapshotChunk {
        offset: 50,
        ..sealed.clone()
    };
    assert!(matches!(
        roundtrip(&past_end),
        Err(WireError::InvalidField {
            field: "offset",
            ..
        })
    ));
    let huge = InstallSnapshotChunk {
        data: vec![0; SNAPSHOT_CHUNK_BYTES_MAX + 1],
        total_bytes: u64::MAX,
        ..sealed
    }
    .seal();
    assert!(matches!(
        roundtrip(&huge),
        Err(WireError::InvalidField { field: "data", .. })
    ));
}

fn batch_of(n: usize) -> Vec<u8> {
    let mut b = RecordBatchBuilder::new();
    for i in 0..n {
        b.push(NewRecord {
            timestamp_ms: 1_700_000_000_000 + i as i64,
            key: Some(b"key"),
            value: Some(b"value-bytes"),
            headers: &[],
        });
    }
    b.finish()
}

#[test]
fn a_damaged_record_batch_is_refused_at_every_truncation_and_bit_flip() {
    let bytes = batch_of(3);
    for len in 0..bytes.len() {
        assert!(
            RecordBatch::parse(&bytes[..len]).is_err(),
            "truncated to {len}"
        );
    }
    // Bytes 0..24 (base offset, term, entry index) are stamped outside the CRC.
    for i in 24..bytes.len() {
        let mut bad = bytes.clone();
        bad[i] ^= 0x10;
        let ok = RecordBatch::parse(&bad).and_then(|b| b.validate_records());
        assert!(ok.is_err(), "flip at byte {i} accepted");
    }
}

#[test]
fn record_lengths_and_counts_are_checked_against_the_bytes_left() {
    // A batch whose header claims more records than it holds.
    let mut bytes = batch_of(2);
    bytes[36..40].copy_from_slice(&1_000_000u32.to_le_bytes());
    let crc = crc32c::crc32c(&bytes[32..]);
    bytes[28..32].copy_from_slice(&crc.to_le_bytes());
    let batch = RecordBatch::parse(&bytes).unwrap();
    assert!(batch.validate_records().is_err());
    // The iterator stops at the first error instead of looping a million times.
    assert_eq!(batch.records().count(), 3);

    // A record whose key length runs past the record.
    let mut b = RecordBatchBuilder::new();
    b.push(NewRecord {
        timestamp_ms: 0,
        key: Some(b"abc"),
        value: None,
        headers: &[],
    });
    let mut bytes = b.finish();
    // record: [len][attr][ts][delta][keylen+1=4]... ; make keylen huge.
    let key_len_at = wire::BATCH_HEADER_BYTES + 4;
    assert_eq!(bytes[key_len_at], 4);
    bytes[key_len_at] = 0x7f;
    let crc = crc32c::crc32c(&bytes[32..]);
    bytes[28..32].copy_from_slice(&crc.to_le_bytes());
    let err = RecordBatch::parse(&bytes)
        .unwrap()
        .validate_records()
        .unwrap_err();
    assert!(err.to_string().contains("key length"), "{err}");
}
