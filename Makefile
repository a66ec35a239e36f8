# DRMQ — the two commands that matter: `make run` and `make test`.
CARGO ?= cargo
SEEDS ?= 20000
FUZZ_SECONDS ?= 600

.PHONY: bench-nats all build dashboard dashboard-test e2e chromium run test lint fmt bench bench-catchup fuzz sim clean

all: build

# The dashboard's built files are embedded in the drmq binary (broker/build.rs).
DASHBOARD := dashboard-web
export DRMQ_DASHBOARD_DIST := $(CURDIR)/$(DASHBOARD)/dist
NPM ?= npm

build: dashboard
	$(CARGO) build --release --workspace --bins

# npm ci from the committed lock file (again only when the lock file changes),
# then a Vite build into dashboard-web/dist.
dashboard: $(DASHBOARD)/node_modules/.package-lock.json
	cd $(DASHBOARD) && $(NPM) run build

$(DASHBOARD)/node_modules/.package-lock.json: $(DASHBOARD)/package-lock.json
	cd $(DASHBOARD) && $(NPM) ci --no-audit --no-fund

dashboard-test: $(DASHBOARD)/node_modules/.package-lock.json
	cd $(DASHBOARD) && $(NPM) test

# Debian's chromium for the browser test (installed once, as root).
chromium:
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

# The dashboard in a real browser against a real 3-broker cluster under load:
# three brokers up, leaders, throughput; kill -9 of the broker that served the
# page; the page shows it down and the new leaders within 5 s.
# Screenshots in target/e2e (docs/dashboard.png is one of them).
E2E_BIN ?= target/debug
e2e: dashboard chromium
	$(CARGO) build -p broker --bin drmq -p loadtest --bin drmq-loadtest
	cd $(DASHBOARD) && E2E_ADAPTER=drmq DRMQ_BIN=$(CURDIR)/$(E2E_BIN)/drmq \
		SCREENSHOT_DIR=$(CURDIR)/target/e2e node e2e/smoke.mjs

# A local 3-broker cluster (drmq dev): Ctrl-C stops it.
run: build
	./target/release/drmq dev --nodes 3 --data-dir data

# Everything CI runs: formatting, lints, every test (Rust, the dashboard's
# data logic, and the browser test against a real cluster).
test: lint dashboard
	$(CARGO) test --workspace
	$(MAKE) dashboard-test e2e

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

# Benchmarks; figures and how to read them are in docs/BENCHMARKS.md.
# The last two are the cost as work grows (issue 15): 256 partitions against
# 16 (RF=3, 1 KiB, maximum rate, interleaved on the same brokers), then an
# idle cluster of 1,000 RF=3 partitions (CPU % of a core, memory, wake-ups
# and peer frames per broker).
bench:
	$(CARGO) bench -p wire --bench codec
	$(CARGO) bench -p raft --bench raft -- 1000000 2000
	$(CARGO) bench -p storage --bench storage
	$(CARGO) build --release -p broker -p loadtest
	./target/release/drmq-loadtest bench --duration-s 5 --warmup-s 1 --quiet --json target/loadtest-bench.json --plot docs/latency-throughput.svg
	./target/release/drmq-loadtest bench --compare-partitions 16,256 --compare-rounds 2 --duration-s 5 --warmup-s 1 --quiet --no-baselines --json target/bench-partitions.json
	./target/release/drmq-loadtest idle --partitions 1000 --window-s 20 --json target/bench-idle.json

# DRMQ against NATS JetStream R3 in the same run (issue 15; figures in
# docs/BENCHMARKS.md): the shared harness's table (client defaults and a
# 256 KiB window), then the maximum-rate and half-load rows.
bench-nats:
	$(CARGO) build --release -p broker -p loadtest
	../shared/peerbench/compare.sh target/release
	scripts/peerbench-max.sh target/release

# Catch-up by snapshot (issue 12), figures in docs/BENCHMARKS.md: on fresh
# local 3-broker clusters, a follower killed while 1 GiB is written rejoins
# by snapshot, then by replay (3 rounds, interleaved); rejoin time, transfer
# MB/s against loopback TCP and write+fdatasync, produce latency to the
# leader's shard during the transfer vs before. About 5 minutes on 2 cores;
# needs about 10 GB free in the temporary directory (it refuses to start
# with less) and removes its data afterwards. More flags, e.g.
# make bench-catchup CATCHUP_ARGS="--snapshot-rate-mb 400 --modes snapshot"
CATCHUP_ARGS ?=
BIN_DIR = $(or $(CARGO_TARGET_DIR),target)/release
bench-catchup:
	$(CARGO) build --release -p broker -p loadtest
	mkdir -p target
	$(BIN_DIR)/drmq-loadtest catch-up --behind-mib 1024 --rounds 3 --json target/bench-catchup.json $(CATCHUP_ARGS)

# Coverage-guided fuzzing of the wire decoder (cargo install cargo-fuzz).
# cargo-fuzz needs nightly-only rustc flags; RUSTC_BOOTSTRAP lets the stable
# toolchain accept them.
fuzz:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	mkdir -p wire/fuzz/corpus/decode && cp wire/fuzz/seeds/* wire/fuzz/corpus/decode/
	cd wire && RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run decode -- -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048

# More Raft simulation seeds than `make test` runs: make sim SEEDS=100000
sim:
	DRMQ_SIM_SEEDS=$(SEEDS) $(CARGO) test -p raft --release --test simulation -- --nocapture

clean:
	$(CARGO) clean
	rm -rf data wire/fuzz/target $(DASHBOARD)/dist $(DASHBOARD)/node_modules
