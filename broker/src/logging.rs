//! The broker's log: every crate logs through `tracing` (one event per line
//! with the fields that identify it: broker, shard, group, peer); a broker
//! process writes the events to stderr, filtered by `RUST_LOG` (default
//! `info`, e.g. `RUST_LOG=debug` or `RUST_LOG=broker=debug,storage=warn`).

use tracing_subscriber::EnvFilter;

/// Installs the stderr subscriber (once per process; later calls do
/// nothing). An unparsable `RUST_LOG` falls back to `info` and says so.
pub fn init() {
    let (filter, bad) = match std::env::var("RUST_LOG") {
        Ok(spec) => match EnvFilter::try_new(&spec) {
            Ok(f) => (f, None),
            Err(e) => (EnvFilter::new("info"), Some(format!("{spec}: {e}"))),
        },
        Err(_) => (EnvFilter::new("info"), None),
    };
    let installed = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(true)
        .try_init();
    if let (Ok(()), Some(bad)) = (installed, bad) {
        tracing::warn!(rust_log = %bad, "RUST_LOG not understood; logging at info");
    }
}
