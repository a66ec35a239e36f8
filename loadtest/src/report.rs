//! The final table, the JSON report and HDR histogram logs.

use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2Serializer;
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::baseline::{FsyncBaseline, TcpBaseline};
use crate::run::{Outcome, Workload};

const QUANTILES: [(&str, f64); 5] = [
    ("p50", 0.5),
    ("p90", 0.9),
    ("p99", 0.99),
    ("p99.9", 0.999),
    ("p99.99", 0.9999),
];

/// One run's figures with its baselines.
pub struct Report<'a> {
    pub name: String,
    pub workload: &'a Workload,
    pub outcome: &'a Outcome,
    pub tcp: Option<&'a TcpBaseline>,
    pub fsync: Option<&'a FsyncBaseline>,
}

impl Report<'_> {
    pub fn msgs_per_s(&self) -> f64 {
        self.outcome.acked_in_window as f64 / self.outcome.window_s
    }
    pub fn bytes_per_s(&self) -> f64 {
        self.msgs_per_s() * self.workload.size.mean()
    }
    fn consume_msgs_per_s(&self) -> f64 {
        self.outcome.consumed_in_window as f64 / self.outcome.window_s
    }

    pub fn ok(&self) -> bool {
        let o = self.outcome;
        // A crashed group member's uncommitted reads come again: that is
        // the at-least-once promise, not a fault.
        let crashed = o.group.as_ref().is_some_and(|g| !g.crash_ms.is_empty());
        let group_ok = o.group.as_ref().is_none_or(|g| g.errors.is_empty());
        o.missing == 0
            && (o.duplicates == 0 || crashed)
            && o.malformed == 0
            && o.fatal.is_empty()
            && group_ok
    }

    pub fn to_json(&self) -> Value {
        let o = self.outcome;
        let w = self.workload;
        json!({
            "name": self.name,
            "config": {
                "topic": w.topic,
                "partitions": o.partitions,
                "producers": w.producers,
                "consumers": w.consumers,
                "message_bytes": format!("{:?}", w.size),
                "message_bytes_mean": w.size.mean(),
                "keyed": w.keys.is_some(),
                "acks": format!("{:?}", w.acks),
                "batch_bytes": w.batch_bytes,
                "linger_us": w.linger.as_micros() as u64,
                "in_flight": w.in_flight,
                "in_flight_bytes": w.in_flight_bytes,
                "mode": if w.rate.is_some() { "open_loop" } else { "max_rate" },
                "target_msgs_per_s": w.rate,
                "warmup_s": w.warmup.as_secs_f64(),
            },
            "window_s": o.window_s,
            "publish": {
                "msgs_per_s": self.msgs_per_s(),
                "mb_per_s": self.bytes_per_s() / 1e6,
                "sent": o.sent,
                "acked": o.acked,
                "failed": o.failed,
                "ack_latency_us": hist_json(&o.ack_us),
                "send_delay_us": w.rate.map(|_| hist_json(&o.send_delay_us)),
            },
            "consume": {
                "msgs_per_s": self.consume_msgs_per_s(),
                "consumed": o.consumed,
                "unique": o.consumed_unique,
                "duplicates": o.duplicates,
                "missing": o.missing,
                "seen_but_not_acked": o.unacked_seen,
                "malformed": o.malformed,
                "backlog_at_producer_end": o.backlog_at_end,
                "drain_s": o.drain_s,
                "drain_msgs_per_s": o.drain_msgs_per_s,
                "end_to_end_latency_us": hist_json(&o.e2e_us),
            },
            "errors": o.errors,
            "retries": o.retries,
            "fatal": o.fatal,
            "broker": {
                "records_appended": o.broker_appended,
                "end_offsets": o.broker_end_offsets,
                "counters": o.broker_counters,
            },
            "dashboards": o.dashboards.as_ref().map(|d| d.to_json()),
            "group": o.group.as_ref().map(|g| g.to_json()),
            "baselines": {
                "tcp_loopback": self.tcp.map(|t| json!({
                    "chunk_bytes": t.chunk_bytes,
                    "mb_per_s": t.bytes_per_s / 1e6,
                    "drmq_ratio": self.bytes_per_s() / t.bytes_per_s,
                })),
                "write_fdatasync": self.fsync.map(|f| json!({
                    "write_bytes": f.write_bytes,
                    "syncs_per_s": f.syncs_per_s,
                    "mb_per_s": f.bytes_per_s / 1e6,
                    "fdatasync_us_p50": f.fdatasync_us_p50,
                    "fdatasync_us_p99": f.fdatasync_us_p99,
                    "drmq_ratio": self.bytes_per_s() / f.bytes_per_s,
                })),
            },
            "ok": self.ok(),
        })
    }

    pub fn print(&self) {
        let o = self.outcome;
        let w = self.workload;
        println!("== {} ==", self.name);
        println!(
            "  {} partitions, {} producer(s), {} consumer(s), values {:?}, {}, acks {:?}, batch {} B, linger {} µs, in-flight {} ({} KiB), {}",
            o.partitions,
            w.producers,
            w.consumers,
            w.size,
            if w.keys.is_some() { "keyed" } else { "unkeyed" },
            w.acks,
            w.batch_bytes,
            w.linger.as_micros(),
            w.in_flight,
            w.in_flight_bytes / 1024,
            match w.rate {
                Some(r) => format!("open loop at {r:.0} msgs/s"),
                None => "max rate (closed loop)".to_owned(),
            }
        );
        println!(
            "  publish  {:>12.0} msgs/s  {:>8.1} MB/s   ({} sent, {} acked, {} failed, window {:.1} s)",
            self.msgs_per_s(),
            self.bytes_per_s() / 1e6,
            o.sent,
            o.acked,
            o.failed,
            o.window_s
        );
        println!(
            "  consume  {:>12.0} msgs/s   ({} consumed, {} unique, {} duplicate, {} missing)",
            self.consume_msgs_per_s(),
            o.consumed,
            o.consumed_unique,
            o.duplicates,
            o.missing
        );
        if let Some(g) = &o.group {
            g.print(o.duplicates);
        }
        match o.drain_msgs_per_s {
            Some(r) => println!(
                "  drain    {r:>12.0} msgs/s   (backlog {} at producer end, drained in {:.2} s)",
                o.backlog_at_end, o.drain_s
            ),
            None => println!(
                "  drain    (no backlog to speak of: {} at producer end)",
                o.backlog_at_end
            ),
        }
        println!(
            "  {:<18} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "latency (µs)", "p50", "p90", "p99", "p99.9", "p99.99", "max"
        );
        let mut rows = vec![("publish ack", &o.ack_us), ("end-to-end", &o.e2e_us)];
        if w.rate.is_some() {
            rows.push(("send delay", &o.send_delay_us));
        }
        for (name, h) in rows {
            print!("  {name:<18}");
            if h.is_empty() {
                println!(" (no samples)");
                continue;
            }
            for (_, q) in QUANTILES {
                print!(" {:>9}", h.value_at_quantile(q));
            }
            println!(" {:>9}", h.max());
        }
        if let Some(t) = self.tcp {
            println!(
                "  baseline tcp loopback      {:>8.1} MB/s ({} B writes); DRMQ publish = {:.3}x",
                t.bytes_per_s / 1e6,
                t.chunk_bytes,
                self.bytes_per_s() / t.bytes_per_s
            );
        }
        if let Some(f) = self.fsync {
            println!(
                "  baseline write+fdatasync  {:>8.1} MB/s ({} B writes, {:.0} syncs/s, p50 {} µs, p99 {} µs); DRMQ publish = {:.3}x, DRMQ ack p50 / fdatasync p50 = {:.2}",
                f.bytes_per_s / 1e6,
                f.write_bytes,
                f.syncs_per_s,
                f.fdatasync_us_p50,
                f.fdatasync_us_p99,
                self.bytes_per_s() / f.bytes_per_s,
                o.ack_us.value_at_quantile(0.5) as f64 / f.fdatasync_us_p50.max(1) as f64
            );
        }
        if !o.errors.is_empty() {
            println!("  errors by kind: {:?}", o.errors);
        }
        if !o.retries.is_empty() {
            println!("  retries by kind: {:?}", o.retries);
        }
        println!(
            "  broker: {} records appended during the run (log end offsets; a new leader's no-op counts one), {} acknowledged",
            o.broker_appended, o.acked
        );
        if let Some(c) = &o.broker_counters {
            let get = |k: &str| c.get(k).copied().unwrap_or(0);
            let (preq, freq) = (get("produce_requests"), get("fetch_requests"));
            println!(
                "  broker counters: {preq} produce requests ({:.1} records, {:.0} B each), {freq} fetches ({:.0} B each), {} errors",
                o.acked as f64 / preq.max(1) as f64,
                get("produce_bytes") as f64 / preq.max(1) as f64,
                get("fetch_bytes") as f64 / freq.max(1) as f64,
                get("errors")
            );
        }
        if let Some(d) = &o.dashboards {
            d.print();
        }
        for f in &o.fatal {
            println!("  FAILED: {f}");
        }
    }
}

fn hist_json(h: &Histogram<u64>) -> Value {
    let mut m = serde_json::Map::new();
    m.insert("count".into(), json!(h.len()));
    if !h.is_empty() {
        for (name, q) in QUANTILES {
            m.insert(name.into(), json!(h.value_at_quantile(q)));
        }
        m.insert("max".into(), json!(h.max()));
        m.insert("mean".into(), json!(h.mean()));
    }
    Value::Object(m)
}

/// Writes one HDR interval log per latency kind into `dir` (one interval
/// covering the measurement window; tagged with the run's name).
pub fn write_hdr_logs(dir: &Path, name: &str, o: &Outcome) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (kind, h) in [
        ("ack", &o.ack_us),
        ("e2e", &o.e2e_us),
        ("send-delay", &o.send_delay_us),
    ] {
        let path = dir.join(format!("{name}.{kind}.hlog"));
        let mut file =
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let mut ser = V2Serializer::new();
        let mut log = IntervalLogWriterBuilder::new()
            .add_comment(&format!(
                "drmq-loadtest {name} {kind} latency, microseconds"
            ))
            .with_start_time(SystemTime::now())
            .begin_log_with(&mut file, &mut ser)?;
        let tag = Tag::new(kind);
        log.write_histogram(h, Duration::ZERO, Duration::from_secs_f64(o.window_s), tag)
            .map_err(|e| anyhow::anyhow!("writing {}: {e:?}", path.display()))?;
    }
    Ok(())
}
