//! The `drmq` binary: wrong flags and bad input give a one-line error and a
//! non-zero exit; `--check-config` prints the resolved configuration.

use std::process::{Command, Output};

mod common;

fn drmq(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_drmq"))
        .args(args)
        .output()
        .expect("run drmq")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn an_unknown_flag_is_a_usage_error_with_exit_2() {
    let o = drmq(&["topic", "list", "--no-such-flag"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--no-such-flag"), "{}", stderr(&o));
}

#[test]
fn broker_check_config_prints_the_merged_settings_as_json() {
    let o = drmq(&[
        "broker",
        "--id",
        "2",
        "--data-dir",
        "/tmp/d2",
        "--listen",
        "127.0.0.1:9093",
        "--peer-listen",
        "127.0.0.1:9193",
        "--http",
        "127.0.0.1:8082",
        "--peers",
        "1=127.0.0.1:9192,2=127.0.0.1:9193,3=127.0.0.1:9194",
        "--shards",
        "2",
        "--cluster-secret",
        "a-long-enough-secret",
        "--pin-shards",
        "false",
        "--check-config",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains("a-long-enough-secret"),
        "the secret is never printed"
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["id"], 2);
    assert_eq!(v["shards"], 2);
    assert_eq!(v["pin_shards"], false);
    assert_eq!(v["peers"]["3"], "127.0.0.1:9194");
}

#[test]
fn a_missing_config_file_or_bad_peers_is_one_line_and_exit_1() {
    for args in [
        &["broker", "--config", "/nonexistent/drmq.toml"][..],
        &["broker", "--id", "1", "--peers", "1=nowhere"][..],
        &["topic", "create", "../escape", "--brokers", "127.0.0.1:1"][..],
        &["topic", "list", "--brokers", "not-an-address"][..],
    ] {
        let o = drmq(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let err = stderr(&o);
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("drmq: error: "), "{err}");
    }
}

#[test]
fn an_unreachable_broker_is_a_clear_error_not_a_hang() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    drop(l);
    let o = drmq(&[
        "cluster",
        "status",
        "--brokers",
        &addr,
        "--timeout-ms",
        "2000",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains(&addr), "{}", stderr(&o));
}

#[test]
fn a_cluster_without_a_shared_secret_is_refused() {
    let o = drmq(&[
        "broker",
        "--id",
        "1",
        "--data-dir",
        "/tmp/d1",
        "--listen",
        "127.0.0.1:9092",
        "--peer-listen",
        "127.0.0.1:9192",
        "--http",
        "127.0.0.1:8081",
        "--peers",
        "1=127.0.0.1:9192,2=127.0.0.1:9193",
        "--check-config",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("cluster-secret"), "{}", stderr(&o));
}

#[test]
fn dev_runs_a_broker_with_a_demo_topic_and_stops_it_on_sigterm() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    // A free run of ports for client (2 shards max here), and peer/http offsets.
    let port = loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        drop(l);
        if (2000..60_000).contains(&p)
            && [p, p + 1, p + 200, p + 201, p - 1011]
                .iter()
                .all(|&q| std::net::TcpListener::bind(("127.0.0.1", q)).is_ok())
        {
            break p;
        }
    };
    /// Kills `drmq dev` if the test ends early; never touches a reaped pid.
    struct DevGuard(std::process::Child);
    impl Drop for DevGuard {
        fn drop(&mut self) {
            if let Ok(None) = self.0.try_wait() {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
    }
    let mut guard = DevGuard(
        Command::new(env!("CARGO_BIN_EXE_drmq"))
            .args(["dev", "--nodes", "1", "--port", &port.to_string()])
            .arg("--data-dir")
            .arg(dir.path())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let dev = &mut guard.0;
    let mut lines = BufReader::new(dev.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let up = lines
        .by_ref()
        .take(20)
        .map_while(Result::ok)
        .inspect(|l| seen.push(l.clone()))
        .any(|l| l.contains("broker(s) up"));
    assert!(up, "dev did not report the cluster up: {seen:#?}");
    let brokers = format!("127.0.0.1:{port}");
    let o = drmq(&["topic", "describe", "demo", "--brokers", &brokers]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["partitions"].as_array().unwrap().len(), 3);
    assert!(Command::new("kill")
        .args(["-TERM", &dev.id().to_string()])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = dev.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "dev did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    // Its broker is gone too (its listening socket may outlive the process
    // for a moment: io_uring releases files asynchronously).
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(Instant::now() < deadline, "the broker still listens");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `cluster status`, `topic describe` and `topic list` print JSON when
/// stdout is not a terminal (as here: tests run piped) and with `--json`,
/// the same JSON either way; `--table` forces the table.
#[test]
fn piped_output_and_json_flag_give_json_and_table_flag_gives_a_table() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::Broker::start(dir.path());
    broker.create_topic("shown", 2);
    let json = |args: &[&str]| -> serde_json::Value {
        let o = broker.cli(args, None);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
            panic!(
                "{args:?} is not JSON ({e}): {}",
                String::from_utf8_lossy(&o.stdout)
            )
        })
    };
    let piped = json(&["topic", "describe", "shown"]);
    assert_eq!(piped["name"], "shown");
    assert_eq!(piped["partitions"].as_array().unwrap().len(), 2);
    assert_eq!(json(&["topic", "describe", "shown", "--json"]), piped);
    let status = json(&["cluster", "status"]);
    assert_eq!(status["brokers"][0]["id"], 1);
    assert!(status["partitions"].is_array());
    let status = json(&["cluster", "status", "--json"]);
    assert_eq!(status["controller"], 1);
    let list = json(&["topic", "list", "--json"]);
    assert_eq!(list, json(&["topic", "list"]));
    assert_eq!(list[0]["name"], "shown");

    let o = broker.cli(&["topic", "describe", "shown", "--table"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        serde_json::from_slice::<serde_json::Value>(&o.stdout).is_err(),
        "{text}"
    );
    assert!(text.starts_with("TOPIC "), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("PARTITION  LEADER  TERM")),
        "{text}"
    );
    let o = broker.cli(&["cluster", "status", "--table"], None);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.starts_with("CONTROLLER  1\n"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("shown ")), "{text}");
    let o = broker.cli(&["cluster", "status", "--json", "--table"], None);
    assert_eq!(o.status.code(), Some(2), "--json and --table conflict");
}
