//! A latency-versus-throughput chart as a self-contained SVG: one line per
//! series for p50 (solid) and p99 (dashed) publish-ack latency, log-scaled
//! latency axis.

use std::fmt::Write;

pub struct Point {
    pub msgs_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

pub struct Series {
    pub name: String,
    pub points: Vec<Point>,
}

const W: f64 = 720.0;
const H: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;
const COLORS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

/// Renders `series` (empty series are skipped).
pub fn svg(title: &str, series: &[Series]) -> String {
    let pts = series.iter().flat_map(|s| &s.points);
    let x_max = pts.clone().map(|p| p.msgs_per_s).fold(1.0, f64::max) * 1.05;
    let lat = pts.flat_map(|p| [p.p50_ms, p.p99_ms]).filter(|v| *v > 0.0);
    let (lo, hi) = lat.fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (y_lo, y_hi) = if hi > 0.0 {
        (
            10f64.powf(lo.log10().floor()),
            10f64.powf(hi.log10().ceil()),
        )
    } else {
        (0.1, 10.0)
    };
    let (y_lo, y_hi) = (y_lo.min(y_hi / 10.0), y_hi);
    let x = |v: f64| LEFT + v / x_max * (W - LEFT - RIGHT);
    let y = |v: f64| {
        let f = (v.max(y_lo).log10() - y_lo.log10()) / (y_hi.log10() - y_lo.log10());
        H - BOTTOM - f * (H - TOP - BOTTOM)
    };
    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(o, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        o,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="14">{}</text>"#,
        W / 2.0,
        escape(title)
    );
    // Axes and grid.
    let _ = writeln!(
        o,
        r#"<line x1="{LEFT}" y1="{0}" x2="{1}" y2="{0}" stroke="black"/><line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{0}" stroke="black"/>"#,
        H - BOTTOM,
        W - RIGHT
    );
    let mut decade = y_lo;
    while decade <= y_hi * 1.0001 {
        let yy = y(decade);
        let _ = writeln!(
            o,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{}" y2="{yy:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            yy + 4.0,
            fmt_ms(decade)
        );
        decade *= 10.0;
    }
    for i in 0..=5 {
        let v = x_max * f64::from(i) / 5.0;
        let _ = writeln!(
            o,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            x(v),
            H - BOTTOM + 18.0,
            fmt_rate(v)
        );
    }
    let _ = writeln!(
        o,
        r#"<text x="{}" y="{}" text-anchor="middle">acknowledged msgs/s</text>"#,
        (LEFT + W - RIGHT) / 2.0,
        H - 18.0
    );
    let _ = writeln!(
        o,
        r#"<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">publish-ack latency (ms, log)</text>"#,
        H / 2.0,
        H / 2.0
    );
    for (k, s) in series.iter().filter(|s| !s.points.is_empty()).enumerate() {
        let color = COLORS[k % COLORS.len()];
        for (dash, get) in [
            ("", (|p: &Point| p.p50_ms) as fn(&Point) -> f64),
            (r#" stroke-dasharray="6 4""#, |p: &Point| p.p99_ms),
        ] {
            let path: Vec<String> = s
                .points
                .iter()
                .map(|p| format!("{:.1},{:.1}", x(p.msgs_per_s), y(get(p))))
                .collect();
            let _ = writeln!(
                o,
                r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"{dash}/>"#,
                path.join(" ")
            );
            for p in &s.points {
                let _ = writeln!(
                    o,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#,
                    x(p.msgs_per_s),
                    y(get(p))
                );
            }
        }
        let ly = TOP + 16.0 * k as f64;
        let _ = writeln!(
            o,
            r#"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="2"/><text x="{}" y="{}">{} (solid p50, dashed p99)</text>"#,
            LEFT + 12.0,
            LEFT + 36.0,
            LEFT + 42.0,
            ly + 4.0,
            escape(&s.name)
        );
    }
    o.push_str("</svg>\n");
    o
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn fmt_ms(v: f64) -> String {
    if v >= 1.0 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

fn fmt_rate(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chart_has_a_line_and_a_point_per_measurement() {
        let s = svg(
            "t <1>",
            &[Series {
                name: "RF=3".into(),
                points: vec![
                    Point {
                        msgs_per_s: 1000.0,
                        p50_ms: 1.0,
                        p99_ms: 5.0,
                    },
                    Point {
                        msgs_per_s: 5000.0,
                        p50_ms: 2.0,
                        p99_ms: 40.0,
                    },
                ],
            }],
        );
        assert!(s.starts_with("<svg"));
        assert!(s.contains("t &lt;1&gt;"), "titles are escaped");
        assert_eq!(s.matches("<polyline").count(), 2, "p50 and p99");
        assert_eq!(s.matches("<circle").count(), 4);
        assert!(s.trim_end().ends_with("</svg>"));
    }
}
