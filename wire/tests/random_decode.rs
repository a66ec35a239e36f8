//! A bounded randomized decoder test (the fuzz target's little sibling, run by
//! `make test`): garbage and mutated frames never panic, and nothing decodes
//! that should not. Seeded; `WIRE_RANDOM_SEED=<n>` replays one run and
//! `WIRE_RANDOM_CASES=<n>` runs more.

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use wire::*;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn sample_frames() -> Vec<Vec<u8>> {
    let limits = FrameLimits::default();
    let mut batch = RecordBatchBuilder::new();
    batch.push(NewRecord {
        timestamp_ms: 1,
        key: Some(b"k"),
        value: Some(b"v"),
        headers: &[],
    });
    let batch = batch.finish();
    let msgs: Vec<Message> = vec![
        MetadataRequest {
            topics: Some(vec!["a".into(), "b".into()]),
        }
        .into(),
        ProduceRequest {
            topic: "t".into(),
            partition: 1,
            acks: Acks::Quorum,
            timeout_ms: 10,
            batch: batch.clone(),
        }
        .into(),
        FetchResponse {
            topic: "t".into(),
            partition: 0,
            high_watermark: 9,
            log_start_offset: 0,
            batches: batch,
        }
        .into(),
        ErrorResponse::new(ErrorCode::NotLeader, "go elsewhere").into(),
        HeartbeatBatchRequest {
            from: 1,
            heartbeats: vec![
                GroupHeartbeat {
                    group: 1,
                    term: 2,
                    commit_index: 3
                };
                3
            ],
        }
        .into(),
        JoinGroupRequest {
            group: "g".into(),
            member_id: None,
            client_id: "c".into(),
            topics: vec!["t".into()],
            lease_ms: 1,
        }
        .into(),
    ];
    msgs.iter()
        .enumerate()
        .map(|(i, m)| m.encode(i as u64, limits).unwrap().to_vec())
        .collect()
}

/// Runs the full decode path; returns whether a message came out.
fn decode_all(bytes: &[u8], limits: FrameLimits) -> usize {
    let mut decoder = FrameDecoder::new(limits);
    decoder.extend(bytes);
    let mut decoded = 0;
    while let Ok(Some(frame)) = decoder.next_frame() {
        if let Ok(msg) = frame.message() {
            decoded += 1;
            if let Message::ProduceRequest(p) = msg {
                if let Ok(b) = RecordBatch::parse(&p.batch) {
                    let _ = b.validate_records();
                }
            }
        }
    }
    assert!(decoder.buffered_bytes() <= bytes.len());
    decoded
}

#[test]
fn random_and_mutated_input_never_panics_and_corruption_never_decodes() {
    let seed = env_u64("WIRE_RANDOM_SEED", rand::random());
    let cases = env_u64("WIRE_RANDOM_CASES", 20_000);
    println!("seed {seed}, {cases} cases (replay: WIRE_RANDOM_SEED={seed} cargo test -p wire --test random_decode)");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let limits = FrameLimits::new(64 * 1024).unwrap();
    let samples = sample_frames();
    let mut mutated_decoded = 0u64;
    for _ in 0..cases {
        match rng.gen_range(0..3) {
            0 => {
                let mut garbage = vec![0u8; rng.gen_range(0..256)];
                rng.fill_bytes(&mut garbage);
                decode_all(&garbage, limits);
            }
            1 => {
                // Flip bytes in a valid frame: the CRC must catch it.
                let original = &samples[rng.gen_range(0..samples.len())];
                let mut f = original.clone();
                let flips = rng.gen_range(1..4);
                for _ in 0..flips {
                    let i = rng.gen_range(0..f.len());
                    let x: u8 = rng.gen_range(1..=255);
                    f[i] ^= x;
                }
                // Two flips of the same byte by the same value cancel out:
                // only frames that really differ must fail.
                let changed = f != *original;
                if changed && decode_all(&f, limits) > 0 {
                    mutated_decoded += 1;
                }
            }
            _ => {
                // Valid frames cut at a random point, followed by garbage.
                let f = &samples[rng.gen_range(0..samples.len())];
                let cut = rng.gen_range(0..=f.len());
                let mut bytes = f[..cut].to_vec();
                let mut tail = vec![0u8; rng.gen_range(0..32)];
                rng.fill_bytes(&mut tail);
                bytes.extend_from_slice(&tail);
                decode_all(&bytes, limits);
            }
        }
    }
    // A 32-bit CRC lets about one in 4 billion random corruptions through;
    // at these case counts any hit means the check is not doing its job.
    assert_eq!(mutated_decoded, 0, "corrupted frames decoded (seed {seed})");
}
