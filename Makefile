# DRMQ — the two commands that matter: `make run` and `make test`.
CARGO ?= cargo
SEEDS ?= 20000
FUZZ_SECONDS ?= 600

.PHONY: all build run test lint fmt bench fuzz sim clean

all: build

build:
	$(CARGO) build --release --workspace --bins

# A local 3-broker cluster (drmq dev): Ctrl-C stops it.
run: build
	./target/release/drmq dev --nodes 3 --data-dir data

# Everything CI runs: formatting, lints, every test.
test: lint
	$(CARGO) test --workspace

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

# Benchmarks; figures and how to read them are in docs/BENCHMARKS.md.
bench:
	$(CARGO) bench -p wire --bench codec
	$(CARGO) bench -p raft --bench raft -- 1000000 2000
	$(CARGO) bench -p storage --bench storage
	$(CARGO) build --release -p broker -p loadtest
	./target/release/drmq-loadtest bench --duration-s 5 --warmup-s 1 --quiet --json target/loadtest-bench.json --plot docs/latency-throughput.svg

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
	rm -rf data wire/fuzz/target
