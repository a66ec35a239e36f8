//! `drmq-loadtest`: the DRMQ load-test harness.
//!
//! The harness drives the broker's client library, which arrives with the
//! broker runtime; until then this binary only says so.

use std::process::ExitCode;

fn main() -> ExitCode {
    if std::env::args().any(|a| a == "--help" || a == "-h") {
        println!(
            "drmq-loadtest: load-test harness for DRMQ (not built yet: needs the broker runtime)"
        );
        return ExitCode::SUCCESS;
    }
    eprintln!(
        "drmq-loadtest: error: the load test needs the broker runtime, which is not built yet"
    );
    ExitCode::FAILURE
}
