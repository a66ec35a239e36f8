#!/usr/bin/env bash
# Latency against throughput, DRMQ RF=3 and NATS JetStream R3 (fsync and
# lazy) on the same axes, in ONE run: each system is swept over the bytes it
# keeps in flight (closed loop), 1 KiB messages, publish acknowledgements.
# NATS: 3-node cluster on loopback (the shared peerbench configs), an R3
# stream, nats-bench-rs with W = 8..2048 messages in flight. DRMQ: three
# brokers and one partition (drmq-loadtest), 64 KiB batches (smaller below a
# 128 KiB window) and a byte window of 16 KiB..4 MiB.
#
# Usage: scripts/latency-curve.sh [DRMQ_BIN_DIR] [SVG]
#        (defaults target/release and docs/latency-vs-nats.svg)
# Env:   PEERBENCH (../shared/peerbench)  N (100000 NATS messages per point)
#        DUR (5 s per DRMQ point)
# Needs NATS and its bench client as compare.sh installs them (run it once).
# Prints a markdown table; writes the SVG.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$(cd "${1:-$ROOT/target/release}" && pwd)
SVG=${2:-$ROOT/docs/latency-vs-nats.svg}
PB=$(cd "${PEERBENCH:-$ROOT/../shared/peerbench}" && pwd)
SCRATCH=${SCRATCH:-$(dirname "$(mktemp -u)")}
NATS_BIN=${NATS_BIN:-$SCRATCH/peerbench-venv/bin/nats-server}
BENCH=${BENCH:-$SCRATCH/peerbench-target/release/nats-bench-rs}
N=${N:-100000}; DUR=${DUR:-5}
if [ ! -x "$NATS_BIN" ] || [ ! -x "$BENCH" ]; then
  echo "NATS or its bench client is missing: run $PB/compare.sh once first" >&2; exit 1
fi
OUT=$SCRATCH/peerbench/curve-$(date +%s); mkdir -p "$OUT"
echo "latency-curve: results in $OUT" >&2

PIDS=()
stop_nats() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && wait "$p" 2>/dev/null || true; done
  PIDS=()
}
trap stop_nats EXIT

healthy() { # url, pattern: bounded to 30 s
  for _ in $(seq 1 150); do
    curl -sf "$1" 2>/dev/null | grep -q "$2" && return 0; sleep 0.2
  done
  echo "timeout waiting for $1" >&2; return 1
}

nats_sweep() { # SYNC: always | default
  local sync=$1 data=$OUT/nats-$1
  if curl -sf http://127.0.0.1:8231/healthz >/dev/null 2>&1; then
    echo "a NATS server already answers on 127.0.0.1:8231: stop it first" >&2; exit 1
  fi
  mkdir -p "$data/conf"
  for i in 1 2 3; do
    local conf=$data/conf/node$i.conf
    sed "s#@DATA@#$data#g" "$PB/nats/node$i.conf" > "$conf"
    if [ "$sync" = always ]; then
      sed -i 's/^jetstream {/jetstream {\n  sync_interval: always/' "$conf"
    fi
    "$NATS_BIN" -c "$conf" > "$data/n$i.log" 2>&1 & PIDS+=($!)
  done
  for i in 1 2 3; do healthy "http://127.0.0.1:823$i/healthz" ok; done
  healthy http://127.0.0.1:8231/jsz '"leader": "n'
  sleep 1
  for w in 8 32 128 512 2048; do
    timeout 200 "$BENCH" --servers nats://127.0.0.1:4231 -r 3 --max-secs 60 -n "$N" -s 1024 \
      -w "$w" --leader local --no-consume --label "nats-$sync,W$w" > "$data/w$w.out" 2>&1 \
      || echo "nats $sync W$w failed" >&2
    grep '^RESULT' "$data/w$w.out" >> "$OUT/nats.txt" || true
  done
  stop_nats
  rm -rf "$data"/nats-n?
  sync # lazy fsync's dirty pages are written back now, not in the next run
}

drmq_sweep() {
  for w in 16384 65536 131072 262144 524288 1048576 4194304; do
    local batch=$(( w >= 131072 ? 65536 : w / 2 ))
    (cd "$OUT" && timeout 120 "$BIN/drmq-loadtest" run --spawn-broker --nodes 3 --replication 3 \
      --partitions 1 --message-bytes 1024 --batch-bytes "$batch" --in-flight 64 \
      --in-flight-bytes "$w" --duration-s "$DUR" --warmup-s 1 --quiet --no-baselines \
      --json "$OUT/drmq-w$w.json" > "$OUT/drmq-w$w.log" 2>&1) || echo "drmq W$w failed" >&2
  done
}

nats_sweep always
drmq_sweep
nats_sweep default

python3 - "$OUT" "$SVG" <<'PY'
import glob, json, math, os, re, sys
out, svg = sys.argv[1], sys.argv[2]
series = {"NATS R3 fsync": [], "NATS R3 lazy": [], "DRMQ RF=3": []}
for line in open(f"{out}/nats.txt"):
    kv = dict(p.split("=", 1) for p in line.split()[1:])
    name = "NATS R3 fsync" if "nats-always" in kv["label"] else "NATS R3 lazy"
    series[name].append((int(kv["window"]) * 1024, float(kv["pub_msgs_s"]),
                         int(kv["p50_us"]) / 1e3, int(kv["p99_us"]) / 1e3))
for f in glob.glob(f"{out}/drmq-w*.json"):
    w = int(re.search(r"w(\d+)", os.path.basename(f)).group(1))
    d = json.load(open(f))
    if not d.get("ok"):
        print(f"skipped (failed run): {f}", file=sys.stderr)
        continue
    p = d["publish"]
    l = p["ack_latency_us"]
    series["DRMQ RF=3"].append((w, p["msgs_per_s"], l["p50"] / 1e3, l["p99"] / 1e3))
print("| system | bytes in flight | msgs/s | ack p50 / p99 ms |")
print("|---|---:|---:|---|")
for name, pts in series.items():
    pts.sort()
    for w, r, p50, p99 in pts:
        print(f"| {name} | {w // 1024} KiB | {r:,.0f} | {p50:.1f} / {p99:.1f} |")

W, H, L, R, T, B = 760, 460, 70, 170, 30, 50
xmax = max(r for pts in series.values() for _, r, _, _ in pts) * 1.1
lo, hi = 0.1, max(p99 for pts in series.values() for *_, p99 in pts) * 1.5
X = lambda r: L + (W - L - R) * r / xmax
Y = lambda ms: T + (H - T - B) * (1 - (math.log10(max(ms, lo)) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)))
colour = {"NATS R3 fsync": "#d62728", "NATS R3 lazy": "#ff7f0e", "DRMQ RF=3": "#1f77b4"}
s = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
     f'<rect width="{W}" height="{H}" fill="white"/>',
     f'<text x="{L}" y="18" font-size="14">Ack latency against throughput, RF=3 / R3, 1 KiB, 1 partition / stream (closed loop, bytes in flight swept)</text>']
for ms in [0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200]:
    if lo <= ms <= hi:
        s.append(f'<line x1="{L}" x2="{W-R}" y1="{Y(ms):.1f}" y2="{Y(ms):.1f}" stroke="#ddd"/>')
        s.append(f'<text x="{L-6}" y="{Y(ms)+4:.1f}" text-anchor="end">{ms:g}</text>')
step = 25000 if xmax < 250000 else 50000
for r in range(0, int(xmax) + 1, step):
    s.append(f'<line x1="{X(r):.1f}" x2="{X(r):.1f}" y1="{T}" y2="{H-B}" stroke="#eee"/>')
    s.append(f'<text x="{X(r):.1f}" y="{H-B+16}" text-anchor="middle">{r//1000}k</text>')
s.append(f'<text x="{(L+W-R)/2}" y="{H-10}" text-anchor="middle">acknowledged msgs/s</text>')
s.append(f'<text x="16" y="{(T+H-B)/2}" transform="rotate(-90 16 {(T+H-B)/2})" text-anchor="middle">ack latency (ms, log)</text>')
for i, (name, pts) in enumerate(series.items()):
    c = colour[name]
    for k, dash in ((2, ""), (3, ' stroke-dasharray="5,4"')):
        d = " ".join(f"{X(p[1]):.1f},{Y(p[k]):.1f}" for p in pts)
        s.append(f'<polyline points="{d}" fill="none" stroke="{c}" stroke-width="2"{dash}/>')
    for p in pts:
        s.append(f'<circle cx="{X(p[1]):.1f}" cy="{Y(p[2]):.1f}" r="3" fill="{c}"/>')
    y = T + 20 + 40 * i
    s.append(f'<line x1="{W-R+10}" x2="{W-R+34}" y1="{y}" y2="{y}" stroke="{c}" stroke-width="2"/>')
    s.append(f'<text x="{W-R+40}" y="{y+4}">{name}</text>')
y = T + 20 + 40 * len(series)
s.append(f'<text x="{W-R+10}" y="{y}">solid: p50</text><text x="{W-R+10}" y="{y+16}">dashed: p99</text>')
s.append("</svg>")
open(svg, "w").write("\n".join(s) + "\n")
print(f"\nwrote {svg}")
PY
