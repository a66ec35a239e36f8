//! The table, the medians over rounds and their formatting.

use super::*;

pub(super) fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

pub(super) fn fmt_opt(v: Option<f64>, prec: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.prec$}"))
}

pub(super) fn ms(us: u64) -> String {
    let v = us as f64 / 1e3;
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

pub(super) fn print_table(results: &[ModeResult], tcp: Option<f64>, fsync: Option<f64>) {
    println!();
    println!(
        "{:<9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>9} {:>7} {:>7} {:>9}",
        "mode",
        "behind MB",
        "log MB",
        "rejoin s",
        "snap MB",
        "xfer s",
        "xfer MB/s",
        "/tcp",
        "/fsync",
        "rejoin MB/s"
    );
    for r in results {
        let rate = r.transfer_mb_per_s;
        println!(
            "{:<9} {:>9.0} {:>9} {:>9} {:>10.1} {:>10} {:>9} {:>7} {:>7} {:>9}",
            r.mode.name(),
            mb(r.behind_bytes),
            r.leader_log_bytes
                .map_or("-".into(), |b| format!("{:.0}", mb(b))),
            fmt_opt(r.rejoin_s, 2),
            mb(r.snapshot_bytes_sent),
            fmt_opt(r.transfer_s, 2),
            fmt_opt(rate, 1),
            fmt_opt(rate.zip(tcp).map(|(r, t)| r / t), 3),
            fmt_opt(rate.zip(fsync).map(|(r, f)| r / f), 3),
            fmt_opt(r.catch_up_mb_per_s, 1),
        );
    }
    println!();
    println!(
        "{:<9} {:<19} {:<9} {:>8} {:>24} {:>8}",
        "mode", "probe", "window", "acked", "p50 / p99 / p99.9 ms", "p99 ×"
    );
    for r in results {
        for p in &r.probes {
            let before = p["windows"]["before"]["p99_us"].as_u64().unwrap_or(0);
            for w in ["before", "catch_up", "transfer", "after"] {
                let Some(v) = p["windows"].get(w) else {
                    continue;
                };
                let g = |k: &str| v[k].as_u64().unwrap_or(0);
                println!(
                    "{:<9} {:<19} {:<9} {:>8} {:>24} {:>8}",
                    r.mode.name(),
                    p["probe"].as_str().unwrap_or("?"),
                    w,
                    g("acked"),
                    format!(
                        "{} / {} / {}",
                        ms(g("p50_us")),
                        ms(g("p99_us")),
                        ms(g("p999_us"))
                    ),
                    fmt_opt(ratio(g("p99_us"), before), 2),
                );
            }
        }
    }
    for r in results {
        for n in &r.notes {
            println!("note ({}): {n}", r.mode.name());
        }
    }
}

/// The middle value (the mean of the middle two for an even count); None
/// for none. NaNs are left out.
pub(super) fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| !x.is_nan());
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// Medians over the rounds of one mode.
#[derive(Debug, Serialize)]
pub(super) struct Summary {
    pub(super) mode: Mode,
    pub(super) rounds: usize,
    pub(super) rejoin_s: Option<f64>,
    pub(super) rejoin_s_all: Vec<Option<f64>>,
    pub(super) transfer_mb_per_s: Option<f64>,
    pub(super) transfer_to_tcp: Option<f64>,
    pub(super) transfer_to_fsync: Option<f64>,
    pub(super) catch_up_mb_per_s: Option<f64>,
    /// Per probe: median p99 (µs) before / during the catch-up / during the
    /// transfer / after, and the median of each round's during/before ratio.
    pub(super) probes: Vec<Value>,
}

pub(super) fn summarize(
    modes: &[Mode],
    results: &[ModeResult],
    tcp: Option<f64>,
    fsync: Option<f64>,
) -> Vec<Summary> {
    let mut out = Vec::new();
    for &mode in modes {
        let rs: Vec<&ModeResult> = results.iter().filter(|r| r.mode == mode).collect();
        if rs.is_empty() {
            continue;
        }
        let med = |f: &dyn Fn(&ModeResult) -> Option<f64>| {
            median(rs.iter().filter_map(|r| f(r)).collect())
        };
        let transfer = med(&|r| r.transfer_mb_per_s);
        let mut probes = Vec::new();
        for name in ["same-shard", "catch-up-partition"] {
            let ps: Vec<&Value> = rs
                .iter()
                .flat_map(|r| r.probes.iter())
                .filter(|p| p["probe"] == name)
                .collect();
            if ps.is_empty() {
                continue;
            }
            let p99 = |w: &str| {
                median(
                    ps.iter()
                        .filter_map(|p| p["windows"][w]["p99_us"].as_u64())
                        .map(|v| v as f64)
                        .collect(),
                )
            };
            let r = |k: &str| median(ps.iter().filter_map(|p| p[k].as_f64()).collect());
            probes.push(json!({
                "probe": name,
                "p99_us_before": p99("before"),
                "p99_us_catch_up": p99("catch_up"),
                "p99_us_transfer": p99("transfer"),
                "p99_us_after": p99("after"),
                "p99_ratio_catch_up_to_before": r("p99_ratio_catch_up_to_before"),
                "p99_ratio_transfer_to_before": r("p99_ratio_transfer_to_before"),
                "p99_ratio_after_to_before": r("p99_ratio_after_to_before"),
            }));
        }
        out.push(Summary {
            mode,
            rounds: rs.len(),
            rejoin_s: med(&|r| r.rejoin_s),
            rejoin_s_all: rs.iter().map(|r| r.rejoin_s).collect(),
            transfer_mb_per_s: transfer,
            transfer_to_tcp: transfer.zip(tcp).map(|(r, t)| r / t),
            transfer_to_fsync: transfer.zip(fsync).map(|(r, f)| r / f),
            catch_up_mb_per_s: med(&|r| r.catch_up_mb_per_s),
            probes,
        });
    }
    out
}

pub(super) fn print_summary(summary: &[Summary]) {
    if summary.iter().all(|s| s.rounds < 2) {
        return;
    }
    println!();
    println!("medians over the rounds:");
    for s in summary {
        println!(
            "{:<9} rounds {}  rejoin {} s {:?}  transfer {} MB/s (/tcp {}, /fsync {})  rejoin MB/s {}",
            s.mode.name(),
            s.rounds,
            fmt_opt(s.rejoin_s, 2),
            s.rejoin_s_all
                .iter()
                .map(|v| fmt_opt(*v, 2))
                .collect::<Vec<_>>(),
            fmt_opt(s.transfer_mb_per_s, 1),
            fmt_opt(s.transfer_to_tcp, 3),
            fmt_opt(s.transfer_to_fsync, 3),
            fmt_opt(s.catch_up_mb_per_s, 1),
        );
        for p in &s.probes {
            let ms = |k: &str| fmt_opt(p[k].as_f64().map(|v| v / 1e3), 1);
            let x = |k: &str| fmt_opt(p[k].as_f64(), 2);
            println!(
                "  {:<19} p99 ms before {} catch-up {} transfer {} after {};  ratio to before (median of rounds): catch-up {} transfer {} after {}",
                p["probe"].as_str().unwrap_or("?"),
                ms("p99_us_before"),
                ms("p99_us_catch_up"),
                ms("p99_us_transfer"),
                ms("p99_us_after"),
                x("p99_ratio_catch_up_to_before"),
                x("p99_ratio_transfer_to_before"),
                x("p99_ratio_after_to_before"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(vec![f64::NAN, 5.0]), Some(5.0));
    }
}
