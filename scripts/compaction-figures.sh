#!/usr/bin/env bash
# Compaction figures for docs/BENCHMARKS.md, from one broker process:
#  (a) bytes of a compacted topic's partition before and after a round;
#  (b) produce latency of another partition on the same shard (one shard),
#      at a fixed rate, while no compaction runs (phase "idle"), while a
#      round runs (phase "busy"), and once it is done ("idle_after": the
#      same condition as "idle" later in the run, for drift).
#
# Timing comes from the broker's own schedule: a shard's first compaction
# check is CHECK_S seconds after start. The fill and the idle phase must end
# before it (checked: the broker's compaction counters are still zero and
# nothing was rewritten); the busy phase starts a second after it and must
# end before the round does (checked: no round has completed at its end).
#
#   make build   # or: cargo build --release -p broker -p loadtest
#   scripts/compaction-figures.sh
#
# Settings (environment): BIN (target/release), KV_MB (400: MB of 1 KiB
# updates over KEYS=1000 keys), RATE (5000 msgs/s of 1 KiB in each phase),
# PHASE_S (15), IO (32: --compact-io-mb-per-sec), CHECK_S (45), PORT (19092).
set -euo pipefail

BIN=${BIN:-target/release}
KV_MB=${KV_MB:-400}
KEYS=${KEYS:-1000}
RATE=${RATE:-5000}
PHASE_S=${PHASE_S:-15}
IO=${IO:-32}
CHECK_S=${CHECK_S:-45}
PORT=${PORT:-19092}
PEER=$((PORT + 100))
HTTP=$((PORT + 200))
BROKERS=127.0.0.1:$PORT

DIR=$(mktemp -d)
PID=
cleanup() {
    if [ -n "$PID" ]; then
        kill "$PID" 2>/dev/null || true
        wait "$PID" 2>/dev/null || true
    fi
    rm -rf "$DIR"
}
trap cleanup EXIT

status() { curl -sf "http://127.0.0.1:$HTTP/api/status"; }
# Sum of a shard counter over the broker's shards.
counter() { status | jq "[.shards[].$1] | add"; }
kv_dir_bytes() { du -sb "$DIR"/data/partitions/kv-0.* | cut -f1; }
elapsed() { echo $(($(date +%s) - T0)); }
# Share of the machine's time some task waited on I/O over the last 10 s
# (PSI): I/O of other processes shows here.
io_pressure() { awk '/^some/ { sub("avg10=", "", $2); print $2 "%" }' /proc/pressure/io 2>/dev/null || echo "n/a"; }
# Share of the compacted topic's bytes in the page cache (the round reads
# them; misses go to the disk the produce fdatasyncs use).
kv_cached() {
    fincore --bytes --noheadings --raw --output RES,SIZE "$DIR"/data/partitions/kv-0.*/*.log 2>/dev/null |
        awk '{ r += $1; s += $2 } END { if (s > 0) printf "%.0f%%\n", 100 * r / s; else print "n/a" }'
}
declare -A PRESSURE

"$BIN/drmq" broker --id 1 --data-dir "$DIR/data" --listen "$BROKERS" \
    --peer-listen 127.0.0.1:$PEER --http 127.0.0.1:$HTTP --shards 1 \
    --compact-interval-ms $((CHECK_S * 1000)) --compact-io-mb-per-sec "$IO" \
    2>"$DIR/broker.log" &
PID=$!
T0=$(date +%s)
for _ in $(seq 100); do
    "$BIN/drmq" topic list --brokers "$BROKERS" >/dev/null 2>&1 && break
    sleep 0.1
done
"$BIN/drmq" topic create kv --brokers "$BROKERS" --replication 1 \
    --segment-bytes $((16 << 20)) --cleanup compact >/dev/null
"$BIN/drmq" topic create lat --brokers "$BROKERS" --replication 1 >/dev/null

echo "fill: ${KV_MB} MB of 1 KiB updates over $KEYS keys"
"$BIN/drmq-loadtest" run --brokers "$BROKERS" --topic kv --keys "$KEYS" \
    --message-bytes 1024 --messages $((KV_MB * 1000)) --warmup-s 0 --quiet \
    --json "$DIR/fill.json" >/dev/null
run_phase() {
    PRESSURE[$1]="$(io_pressure) before, "
    "$BIN/drmq-loadtest" run --brokers "$BROKERS" --topic lat --rate "$RATE" \
        --message-bytes 1024 --duration-s "$PHASE_S" --warmup-s 1 --quiet \
        --json "$DIR/$1.json" >/dev/null
    PRESSURE[$1]+="$(io_pressure) after"
}
echo "idle phase: $RATE msgs/s to 'lat' for ${PHASE_S} s, no compaction"
run_phase idle
if [ "$(elapsed)" -ge "$CHECK_S" ] || [ "$(counter compaction_bytes_before)" != 0 ]; then
    echo "the fill and the idle phase took $(elapsed) s, past the first check at ${CHECK_S} s: raise CHECK_S" >&2
    exit 1
fi
BEFORE=$(kv_dir_bytes)
CACHED=$(kv_cached)
sleep $((CHECK_S + 1 - $(elapsed)))
echo "busy phase: the same, while the round started at ${CHECK_S} s runs"
run_phase busy
if [ "$(counter compactions)" != 0 ]; then
    echo "the round ended before the busy phase did: raise KV_MB or lower IO" >&2
    exit 1
fi
BUSY_END=$(elapsed)
for _ in $(seq 600); do
    [ "$(counter compactions)" != 0 ] && break
    sleep 1
done
ROUND_END=$(elapsed)
AFTER=$(kv_dir_bytes)
echo "idle_after phase: the same, the round done"
run_phase idle_after

echo
echo "(a) compacted topic 'kv': partition directory $BEFORE bytes before, $AFTER after;"
status | jq -r '.shards[0] | "    rewritten segments: \(.compaction_segments_rewritten), their data bytes \(.compaction_bytes_before) -> \(.compaction_bytes_after)"'
echo "    the round ran from ${CHECK_S} s to about ${ROUND_END} s (busy phase ended at ${BUSY_END} s);"
echo "    ${CACHED} of its log bytes were in the page cache when it started"
echo "(b) produce latency of 'lat' (same shard), µs, $RATE msgs/s of 1 KiB:"
for phase in idle busy idle_after; do
    jq -r --arg p "$phase" --arg io "${PRESSURE[$phase]}" '.publish.ack_latency_us as $l | "    \($p): p50 \($l.p50) p99 \($l.p99) p99.9 \($l["p99.9"]) max \($l.max); acked \(.publish.acked), ok \(.ok); I/O pressure \($io)"' "$DIR/$phase.json"
done
