//! The probe producers and the latency windows they are read by.

use super::*;

/// A probe's acknowledged message: intended send time and latency, µs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Sample {
    pub(super) intended_us: u64,
    pub(super) latency_us: u64,
}

/// Latency over a window of the run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(super) struct WindowStats {
    pub(super) from_s: f64,
    pub(super) to_s: f64,
    pub(super) acked: u64,
    pub(super) failed: u64,
    pub(super) p50_us: u64,
    pub(super) p99_us: u64,
    pub(super) p999_us: u64,
    pub(super) max_us: u64,
}

/// Percentiles of the samples whose intended send time is in
/// `[from_us, to_us)`; failures (by intended time) in the same window.
pub(super) fn window_stats(
    samples: &[Sample],
    failures: &[u64],
    from_us: u64,
    to_us: u64,
) -> WindowStats {
    let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("constant bounds");
    for s in samples {
        if (from_us..to_us).contains(&s.intended_us) {
            h.saturating_record(s.latency_us.max(1));
        }
    }
    let failed = failures
        .iter()
        .filter(|t| (from_us..to_us).contains(*t))
        .count() as u64;
    let q = |q| {
        if h.is_empty() {
            0
        } else {
            h.value_at_quantile(q)
        }
    };
    WindowStats {
        from_s: from_us as f64 / 1e6,
        to_s: to_us as f64 / 1e6,
        acked: h.len(),
        failed,
        p50_us: q(0.5),
        p99_us: q(0.99),
        p999_us: q(0.999),
        max_us: if h.is_empty() { 0 } else { h.max() },
    }
}

/// Width of a [`timeline`] bucket.
pub(super) const TIMELINE_BUCKET_US: u64 = 250_000;

/// One bucket of a probe's timeline: by intended send time.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(super) struct Bucket {
    pub(super) from_s: f64,
    pub(super) acked: u64,
    pub(super) p99_us: u64,
    pub(super) max_us: u64,
}

/// The samples in [`TIMELINE_BUCKET_US`] buckets of intended send time,
/// from the first bucket with a sample to the last (empty ones included).
pub(super) fn timeline(samples: &[Sample]) -> Vec<Bucket> {
    let mut hists: BTreeMap<u64, Histogram<u64>> = BTreeMap::new();
    for s in samples {
        hists
            .entry(s.intended_us / TIMELINE_BUCKET_US)
            .or_insert_with(|| {
                Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("constant bounds")
            })
            .saturating_record(s.latency_us.max(1));
    }
    let (Some(&first), Some(&last)) = (hists.keys().next(), hists.keys().next_back()) else {
        return Vec::new();
    };
    (first..=last)
        .map(|i| {
            let h = hists.get(&i);
            Bucket {
                from_s: (i * TIMELINE_BUCKET_US) as f64 / 1e6,
                acked: h.map_or(0, |h| h.len()),
                p99_us: h.map_or(0, |h| h.value_at_quantile(0.99)),
                max_us: h.map_or(0, |h| h.max()),
            }
        })
        .collect()
}

/// `during / before`, None without a baseline.
pub(super) fn ratio(during: u64, before: u64) -> Option<f64> {
    (before > 0).then(|| during as f64 / before as f64)
}

/// One fixed-rate producer thread; stopped and joined when dropped.
pub(super) struct Probe {
    pub(super) name: &'static str,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) thread: Option<JoinHandle<ProbeOut>>,
}

#[derive(Debug, Default)]
pub(super) struct ProbeOut {
    pub(super) samples: Vec<Sample>,
    pub(super) failures: Vec<u64>,
    pub(super) errors: BTreeMap<String, u64>,
    pub(super) sent: u64,
    pub(super) not_recorded: u64,
    pub(super) fatal: Option<String>,
}

impl Probe {
    pub(super) fn start(
        name: &'static str,
        brokers: &[SocketAddr],
        topic: &str,
        partitions: Vec<u32>,
        rate: f64,
        t0: Instant,
    ) -> Result<Probe> {
        let mut cfg = ProducerConfig::new(ClientConfig::new(brokers.to_vec()), topic);
        cfg.acks = Acks::Quorum;
        cfg.linger = Duration::from_millis(1);
        cfg.in_flight_max = 32;
        let producer = Producer::new(cfg).with_context(|| format!("probe producer on {topic}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("probe-{name}"))
            .spawn(move || probe_loop(producer, &partitions, rate, t0, &s))?;
        Ok(Probe {
            name,
            stop,
            thread: Some(thread),
        })
    }

    pub(super) fn finish(mut self) -> ProbeOut {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_else(|| ProbeOut {
                fatal: Some(format!("probe {} panicked", self.name)),
                ..Default::default()
            })
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub(super) fn us_since(t0: Instant, t: Instant) -> u64 {
    t.saturating_duration_since(t0).as_micros() as u64
}

/// Open loop: message `n` is due at `start + n / rate`, latency is counted
/// from then (a stalled producer cannot hide it); round-robin over the
/// partitions. Bounded by the stop flag (and a final flush deadline).
pub(super) fn probe_loop(
    mut p: Producer,
    partitions: &[u32],
    rate: f64,
    t0: Instant,
    stop: &AtomicBool,
) -> ProbeOut {
    let mut out = ProbeOut::default();
    let interval_us = 1e6 / rate;
    let start_us = us_since(t0, Instant::now());
    let mut value = vec![0x5au8; MESSAGE_BYTES];
    let take = |p: &mut Producer, out: &mut ProbeOut| {
        for d in p.take_deliveries() {
            let done = us_since(t0, d.done_at);
            match &d.result {
                Ok(_) => {
                    for &intended in &d.tags {
                        if out.samples.len() < SAMPLES_MAX {
                            out.samples.push(Sample {
                                intended_us: intended,
                                latency_us: done.saturating_sub(intended),
                            });
                        } else {
                            out.not_recorded += 1;
                        }
                    }
                }
                Err(e) => {
                    *out.errors.entry(e.kind().to_owned()).or_insert(0) += d.tags.len() as u64;
                    out.failures.extend(d.tags.iter().copied());
                }
            }
        }
    };
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let intended = start_us + (n as f64 * interval_us) as u64;
        let now = us_since(t0, Instant::now());
        if intended > now {
            p.poll(Duration::from_micros((intended - now).min(50_000)));
            take(&mut p, &mut out);
            continue;
        }
        value[..8].copy_from_slice(&n.to_le_bytes());
        let partition = partitions[(n % partitions.len() as u64) as usize];
        if let Err(e) = p.send_to(partition, None, &value, (intended / 1000) as i64, intended) {
            out.fatal = Some(e.to_string());
            break;
        }
        n += 1;
        out.sent += 1;
        take(&mut p, &mut out);
    }
    if let Err(e) = p.flush(Instant::now() + Duration::from_secs(30)) {
        out.fatal.get_or_insert(e.to_string());
    }
    take(&mut p, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(intended_us: u64, latency_us: u64) -> Sample {
        Sample {
            intended_us,
            latency_us,
        }
    }

    #[test]
    fn windows_take_the_samples_sent_in_them_by_intended_time() {
        // 1..=100 ms latencies sent in [0, 100), 1 s ones in [100, 200).
        let mut samples: Vec<Sample> = (0..100).map(|i| s(i, (i + 1) * 1000)).collect();
        samples.extend((100..200).map(|i| s(i, 1_000_000)));
        let failures = [50, 150, 151];
        let w = window_stats(&samples, &failures, 0, 100);
        assert_eq!((w.acked, w.failed), (100, 1));
        // HDR histograms at 3 significant digits: within 0.1 %.
        let near = |v: u64, want: u64| v.abs_diff(want) * 1000 <= want;
        assert!(near(w.p50_us, 50_000), "{w:?}");
        assert!(near(w.p99_us, 99_000), "{w:?}");
        assert!(near(w.max_us, 100_000), "{w:?}");
        let w = window_stats(&samples, &failures, 100, 200);
        assert_eq!((w.acked, w.failed), (100, 2));
        assert!(near(w.p50_us, 1_000_000));
        // The window's end is excluded; an empty window is zeros.
        assert_eq!(window_stats(&samples, &failures, 99, 100).acked, 1);
        let e = window_stats(&samples, &failures, 500, 600);
        assert_eq!((e.acked, e.p99_us, e.max_us), (0, 0, 0));
        assert_eq!(ratio(30, 10), Some(3.0));
        assert_eq!(ratio(30, 0), None);
    }

    #[test]
    fn the_timeline_has_every_bucket_from_the_first_sample_to_the_last() {
        let b = TIMELINE_BUCKET_US;
        let samples = [s(b + 1, 10), s(b + 2, 30), s(3 * b, 5_000)];
        let t = timeline(&samples);
        assert_eq!(t.len(), 3);
        assert_eq!((t[0].acked, t[0].max_us), (2, 30));
        assert_eq!(t[0].from_s, b as f64 / 1e6);
        assert_eq!((t[1].acked, t[1].p99_us), (0, 0));
        assert_eq!(t[2].acked, 1);
        assert!(t[2].max_us.abs_diff(5_000) <= 50);
        assert!(timeline(&[]).is_empty());
    }
}
