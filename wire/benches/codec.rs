//! Encode/decode throughput of the wire format, next to a memcpy of the same
//! bytes measured in the same run (these machines are shared and noisy: the
//! ratio is the figure that means something).
//!
//! Run: `cargo bench -p wire --bench codec` (or `make bench`). Each figure is
//! the median of 7 rounds of about 0.3 s.

use std::hint::black_box;
use std::time::{Duration, Instant};

use wire::*;

const ROUNDS: usize = 7;
const ROUND_TIME: Duration = Duration::from_millis(300);

/// Median seconds per operation of `op`, which runs `batch` operations per call.
fn time_per_op(batch: u64, mut op: impl FnMut()) -> f64 {
    let mut samples = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let start = Instant::now();
        let mut ops = 0u64;
        while start.elapsed() < ROUND_TIME {
            op();
            ops += batch;
        }
        samples.push(start.elapsed().as_secs_f64() / ops as f64);
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    samples[ROUNDS / 2]
}

fn produce_frame(record_bytes: usize, records: usize) -> ProduceRequest {
    let value = vec![0x5a; record_bytes];
    let mut b = RecordBatchBuilder::with_capacity(records * (record_bytes + 16));
    for i in 0..records {
        b.push(NewRecord {
            timestamp_ms: 1_700_000_000_000 + i as i64,
            key: None,
            value: Some(&value),
            headers: &[],
        });
    }
    ProduceRequest {
        topic: "bench".into(),
        partition: 0,
        acks: Acks::Quorum,
        timeout_ms: 30_000,
        batch: b.finish(),
    }
}

struct Row {
    name: String,
    frame_bytes: usize,
    secs_per_op: f64,
    memcpy_secs_per_op: f64,
    crc_secs_per_op: f64,
}

impl Row {
    fn print(&self) {
        let gbps = self.frame_bytes as f64 / self.secs_per_op / 1e9;
        let memcpy_gbps = self.frame_bytes as f64 / self.memcpy_secs_per_op / 1e9;
        println!(
            "| {} | {} | {:.2} | {:.0} | {:.2} | {:.2} | {:.2} |",
            self.name,
            self.frame_bytes,
            gbps,
            1.0 / self.secs_per_op,
            memcpy_gbps,
            self.frame_bytes as f64 / self.crc_secs_per_op / 1e9,
            self.memcpy_secs_per_op / self.secs_per_op
        );
    }
}

fn memcpy_per_op(bytes: usize) -> f64 {
    // Many copies per timed call so tiny copies are not dominated by the loop.
    let reps = (1 << 20) / bytes.max(1) + 1;
    let src = vec![1u8; bytes];
    let mut dst = vec![0u8; bytes];
    time_per_op(reps as u64, || {
        for _ in 0..reps {
            dst.copy_from_slice(black_box(&src));
            black_box(&mut dst);
        }
    })
}

fn crc_per_op(bytes: usize) -> f64 {
    let reps = (1 << 20) / bytes.max(1) + 1;
    let src = vec![1u8; bytes];
    time_per_op(reps as u64, || {
        for _ in 0..reps {
            black_box(crc32c::crc32c(black_box(&src)));
        }
    })
}

fn bench_message<M>(name: &str, msg: &M, rows: &mut Vec<Row>)
where
    M: WireMessage
        + for<'a> rkyv::Serialize<
            rkyv::api::high::HighSerializer<
                FrameBuf,
                rkyv::ser::allocator::ArenaHandle<'a>,
                rkyv::rancor::Error,
            >,
        >,
    M::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rkyv::rancor::Error>>
        + rkyv::Deserialize<M, rkyv::api::high::HighDeserializer<rkyv::rancor::Error>>,
{
    let limits = FrameLimits::default();
    let frame = encode(msg, 1, limits).unwrap();
    let frame_bytes = frame.len();
    let reps = ((1 << 20) / frame_bytes).max(1);
    let memcpy = memcpy_per_op(frame_bytes);
    let crc = crc_per_op(frame_bytes);

    let mut buf = Some(FrameBuf::with_capacity(frame_bytes));
    let encode_t = time_per_op(reps as u64, || {
        for _ in 0..reps {
            let b = encode_in(black_box(msg), 1, limits, buf.take().unwrap()).unwrap();
            buf = Some(black_box(b));
        }
    });
    rows.push(Row {
        name: format!("{name}: encode"),
        frame_bytes,
        secs_per_op: encode_t,
        memcpy_secs_per_op: memcpy,
        crc_secs_per_op: crc,
    });

    // Decode as a server does: frame check (length, CRC, header), copy into an
    // aligned body, validate the archive, read it in place.
    let decode_t = time_per_op(reps as u64, || {
        for _ in 0..reps {
            let Parsed::Frame { frame: f, .. } = parse_frame(black_box(&frame), limits).unwrap()
            else {
                unreachable!("whole frame")
            };
            let owned = f.to_frame();
            black_box(owned.access::<M>().unwrap());
        }
    });
    rows.push(Row {
        name: format!("{name}: decode (validate, zero-copy)"),
        frame_bytes,
        secs_per_op: decode_t,
        memcpy_secs_per_op: memcpy,
        crc_secs_per_op: crc,
    });

    let owned_t = time_per_op(reps as u64, || {
        for _ in 0..reps {
            let Parsed::Frame { frame: f, .. } = parse_frame(black_box(&frame), limits).unwrap()
            else {
                unreachable!("whole frame")
            };
            black_box(f.to_frame().decode::<M>().unwrap());
        }
    });
    rows.push(Row {
        name: format!("{name}: decode to owned"),
        frame_bytes,
        secs_per_op: owned_t,
        memcpy_secs_per_op: memcpy,
        crc_secs_per_op: crc,
    });
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` does not: then run
    // nothing heavy, just prove the code works.
    if !std::env::args().any(|a| a == "--bench") {
        let msg = produce_frame(1024, 4);
        let frame = encode(&msg, 1, FrameLimits::default()).unwrap();
        assert!(frame.len() > 4096);
        return;
    }
    let mut rows = Vec::new();
    bench_message(
        "produce, 64 KiB batch (64 x 1 KiB)",
        &produce_frame(1024, 64),
        &mut rows,
    );
    bench_message("produce, 1 x 100 B", &produce_frame(100, 1), &mut rows);
    let vote = VoteRequest {
        group: 7,
        term: 3,
        candidate: 2,
        last_log_index: 1000,
        last_log_term: 3,
        pre_vote: false,
        leadership_transfer: false,
    };
    bench_message("vote request", &vote, &mut rows);
    let hb = HeartbeatBatchRequest {
        from: 1,
        heartbeats: (0..64)
            .map(|g| GroupHeartbeat {
                group: g,
                term: 5,
                commit_index: 1000 + g,
            })
            .collect(),
    };
    bench_message("heartbeat batch, 64 groups", &hb, &mut rows);

    println!(
        "| operation | frame bytes | GB/s | frames/s | memcpy GB/s (same bytes) | crc32c GB/s (same bytes) | ratio to memcpy |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for row in &rows {
        row.print();
    }
}
