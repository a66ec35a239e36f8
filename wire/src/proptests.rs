//! Property tests: every message type and record batches round-trip.

use proptest::prelude::*;

use crate::*;

/// Arbitrary values may carry fields that only a sender computes (a chunk's
/// CRC); compute them as a sender would.
fn as_sent(mut msg: Message) -> Message {
    match &mut msg {
        // Fields a sender never leaves out of range (Validate refuses them).
        Message::ProduceRequest(p) if p.batch.is_empty() => p.batch.push(0),
        Message::CreateTopicRequest(c) => {
            c.partitions = c.partitions.max(1);
            c.replication = c.replication.max(1);
        }
        _ => {}
    }
    if let Message::InstallSnapshotChunk(chunk) = &mut msg {
        chunk.chunk_crc = crc32c::crc32c(&chunk.data);
        chunk.total_bytes = chunk
            .total_bytes
            .max(chunk.offset.saturating_add(chunk.data.len() as u64));
        chunk.offset = chunk
            .offset
            .min(chunk.total_bytes - chunk.data.len() as u64);
    }
    msg
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_message_round_trips_through_a_frame(msg in any::<Message>(), corr in any::<u64>()) {
        let msg = as_sent(msg);
        let limits = FrameLimits::default();
        let bytes = msg.encode(corr, limits).unwrap();
        match parse_frame(&bytes, limits).unwrap() {
            Parsed::Frame { frame, consumed } => {
                prop_assert_eq!(consumed, bytes.len());
                prop_assert_eq!(frame.header.kind, msg.kind());
                prop_assert_eq!(frame.header.correlation_id, corr);
                prop_assert_eq!(frame.to_frame().message().unwrap(), msg);
            }
            Parsed::Incomplete { .. } => prop_assert!(false, "whole frame reported incomplete"),
        }
    }

    #[test]
    fn the_stream_decoder_yields_the_same_frames_for_any_split(
        msgs in proptest::collection::vec(any::<Message>(), 1..6),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let limits = FrameLimits::default();
        let msgs: Vec<Message> = msgs.into_iter().map(as_sent).collect();
        let mut stream = Vec::new();
        for (i, m) in msgs.iter().enumerate() {
            stream.extend_from_slice(&m.encode(i as u64, limits).unwrap());
        }
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(stream.len())).collect();
        points.push(stream.len());
        points.sort_unstable();
        let mut decoder = FrameDecoder::new(limits);
        let mut got = Vec::new();
        let mut at = 0;
        for p in points {
            decoder.extend(&stream[at..p]);
            at = p;
            while let Some(f) = decoder.next_frame().unwrap() {
                got.push((f.header.correlation_id, f.message().unwrap()));
            }
        }
        prop_assert_eq!(decoder.buffered_bytes(), 0);
        let want: Vec<(u64, Message)> = msgs.into_iter().enumerate().map(|(i, m)| (i as u64, m)).collect();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn record_batches_round_trip(
        records in proptest::collection::vec(
            (any::<i64>(), proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
             proptest::option::of(proptest::collection::vec(any::<u8>(), 0..200)),
             proptest::collection::vec((proptest::collection::vec(any::<u8>(), 0..10),
                                        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..10))), 0..3)),
            0..20),
        base in 0..(1u64 << 62), term in any::<u64>(), entry in any::<u64>(),
        producer in (any::<i64>(), any::<i16>(), any::<i32>()),
    ) {
        let mut b = RecordBatchBuilder::new().producer(producer.0, producer.1, producer.2);
        let owned_headers: Vec<Vec<Header<'_>>> = records.iter()
            .map(|r| r.3.iter().map(|(k, v)| Header { key: k, value: v.as_deref() }).collect())
            .collect();
        for (r, headers) in records.iter().zip(&owned_headers) {
            b.push(NewRecord { timestamp_ms: r.0, key: r.1.as_deref(), value: r.2.as_deref(), headers });
        }
        let mut bytes = b.finish();
        set_base_offset(&mut bytes, base);
        set_term(&mut bytes, term);
        set_entry_index(&mut bytes, entry);
        let batch = RecordBatch::parse(&bytes).unwrap();
        batch.validate_records().unwrap();
        prop_assert_eq!(batch.base_offset(), base);
        prop_assert_eq!(batch.term(), term);
        prop_assert_eq!(batch.entry_index(), entry);
        prop_assert_eq!(batch.record_count() as usize, records.len());
        prop_assert_eq!((batch.producer_id(), batch.producer_epoch(), batch.base_sequence()), producer);
        for (i, (got, want)) in batch.records().zip(&records).enumerate() {
            let got = got.unwrap();
            prop_assert_eq!(got.offset, base + i as u64);
            prop_assert_eq!(got.timestamp_ms, want.0);
            prop_assert_eq!(got.key, want.1.as_deref());
            prop_assert_eq!(got.value, want.2.as_deref());
            prop_assert_eq!(got.headers.len(), want.3.len());
            for (h, (k, v)) in got.headers.iter().zip(&want.3) {
                prop_assert_eq!(h.key, k.as_slice());
                prop_assert_eq!(h.value, v.as_deref());
            }
        }
        if !records.is_empty() {
            prop_assert_eq!(batch.max_timestamp_ms(), records.iter().map(|r| r.0).max().unwrap());
            prop_assert_eq!(batch.first_timestamp_ms(), records[0].0);
        }
    }
}
