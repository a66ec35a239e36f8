#!/usr/bin/env bash
# DRMQ at its maximum rate and at half of it, against NATS JetStream R3, in
# ONE run, alternating, REPS times: the rows ../shared/peerbench/compare.sh
# does not run (it measures the client defaults and a 256 KiB window).
# Uses compare.sh's NATS set-up (installed on its first use).
#
# Usage: scripts/peerbench-max.sh [DRMQ_BIN_DIR]   (default target/release)
# Env:   PEERBENCH (default ../shared/peerbench)  REPS (3)  DUR (10 s)  N (200000)
#        WINDOW (4194304: batch bytes in flight for the maximum rows)
# Prints a markdown table of medians: msgs/s, ack latency, the ratio to NATS
# R3 with fsync and to NATS R3 lazy, and each DRMQ row as a fraction of the
# disk's ceiling for RF=3 on one disk: write+fdatasync MB/s (64 KiB writes,
# measured by the load test in the same run) / 3.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$(cd "${1:-$ROOT/target/release}" && pwd)
PB=$(cd "${PEERBENCH:-$ROOT/../shared/peerbench}" && pwd)
SCRATCH=${SCRATCH:-$(dirname "$(mktemp -u)")}
export NATS_BIN=${NATS_BIN:-$SCRATCH/peerbench-venv/bin/nats-server}
export BENCH=${BENCH:-$SCRATCH/peerbench-target/release/nats-bench-rs}
REPS=${REPS:-3}; DUR=${DUR:-10}; N=${N:-200000}; WINDOW=${WINDOW:-4194304}
if [ ! -x "$NATS_BIN" ] || [ ! -x "$BENCH" ]; then
  echo "NATS or its bench client is missing: run $PB/compare.sh once first" >&2; exit 1
fi
OUT=$SCRATCH/peerbench/max-$(date +%s); mkdir -p "$OUT"
echo "peerbench-max: results in $OUT" >&2

drmq() { # label, then loadtest args
  local lab=$1; shift
  (cd "$OUT" && timeout 300 "$BIN/drmq-loadtest" run --spawn-broker --nodes 3 --replication 3 \
     --message-bytes 1024 --duration-s "$DUR" --warmup-s 2 --quiet \
     --json "$OUT/$lab-$rep.json" --hdr-log "$OUT/hdr-$lab-$rep" "$@" > "$OUT/$lab-$rep.log" 2>&1) \
    || echo "drmq $lab rep$rep failed" >&2
}
rate_of() { # half the msgs/s of a finished run
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(int(d['publish']['msgs_per_s'] / 2))" "$1" 2>/dev/null || echo 10000
}
nats() { # label, SYNC
  SYNC=$2 REPS=1 EXTRA=0 SIZES=1024 N=$N RES="$OUT/$1-$rep.txt" \
    timeout 300 "$PB/nats/run_nats.sh" cluster > "$OUT/$1-$rep.log" 2>&1 || echo "nats $1 rep$rep failed" >&2
  # NATS with lazy fsync leaves its writes dirty in the page cache; the
  # kernel writes them back ~30 s later, in the middle of the next DRMQ
  # run (its fdatasyncs then wait: p99 of 70-130 ms at half load). Flush
  # them here, outside both measurements.
  sync
}

for rep in $(seq 1 "$REPS"); do
  echo "rep $rep" >&2
  nats nats-r3-fsync always
  drmq drmq-rf3-p1-max --partitions 1 --in-flight 64 --in-flight-bytes "$WINDOW"
  nats nats-r3-lazy default
  drmq drmq-rf3-p16-max --partitions 16 --in-flight 64 --in-flight-bytes "$WINDOW"
  drmq drmq-rf3-p1-half --partitions 1 --in-flight 64 --in-flight-bytes "$WINDOW" \
    --rate "$(rate_of "$OUT/drmq-rf3-p1-max-$rep.json")"
  drmq drmq-rf3-p16-half --partitions 16 --in-flight 64 --in-flight-bytes "$WINDOW" \
    --rate "$(rate_of "$OUT/drmq-rf3-p16-max-$rep.json")"
done

python3 - "$OUT" <<'PY'
import glob, json, os, re, statistics, sys
out = sys.argv[1]
rows, ceil = {}, []
for f in glob.glob(f"{out}/*.json"):
    lab = re.sub(r"-\d+\.json$", "", os.path.basename(f))
    d = json.load(open(f))
    if not d.get("ok"):
        continue
    p = d["publish"]; l = p["ack_latency_us"]
    rows.setdefault(lab, []).append((p["msgs_per_s"], l["p50"] / 1e3, l["p99"] / 1e3, l["p99.9"] / 1e3))
    fs = (d.get("baselines") or {}).get("write_fdatasync")
    if fs and fs.get("mb_per_s"):
        ceil.append(fs["mb_per_s"] * 1e6 / 3 / 1024)  # msgs/s of 1 KiB
for f in glob.glob(f"{out}/*.txt"):
    lab = re.sub(r"-\d+\.txt$", "", os.path.basename(f))
    for line in open(f):
        if line.startswith("RESULT"):
            kv = dict(x.split("=", 1) for x in line.split()[1:] if "=" in x)
            rows.setdefault(lab, []).append((float(kv["pub_msgs_s"]), float(kv["p50_us"]) / 1e3,
                                             float(kv["p99_us"]) / 1e3, float(kv["p999_us"]) / 1e3))
med = {k: [statistics.median(c) for c in zip(*v)] + [len(v)] for k, v in rows.items()}
fs_base = med.get("nats-r3-fsync", [None])[0]
lazy_base = med.get("nats-r3-lazy", [None])[0]
c = statistics.median(ceil) if ceil else None
if c:
    print(f"disk ceiling for RF=3 (write+fdatasync of 64 KiB / 3, median of {len(ceil)}): {c:,.0f} msgs/s of 1 KiB\n")
print("| system | msgs/s (median) | ack p50 / p99 / p99.9 ms | runs | x NATS R3 fsync | x NATS R3 lazy | of disk ceiling |")
print("|---|---:|---|---:|---:|---:|---:|")
for k in sorted(med):
    r, p50, p99, p999, n = med[k]
    f = lambda b: f"{r / b:.2f}" if b else "-"
    cf = f"{r / c:.2f}" if c and k.startswith("drmq") else "-"
    print(f"| {k} | {r:,.0f} | {p50:.1f} / {p99:.1f} / {p999:.1f} | {n} | {f(fs_base)} | {f(lazy_base)} | {cf} |")
PY
