//! The `warrenmqperf` binary against an in-process broker: a short run must
//! publish and consume the same messages, lose none, and report it as one JSON
//! line; a usage error exits with 2.

use std::process::{Command, Output, Stdio};
use std::time::Duration;
use warrenmq::{Config, Server};

const BIN: &str = env!("CARGO_BIN_EXE_warrenmqperf");
const TIMEOUT: Duration = Duration::from_secs(60);

/// Runs the binary on a blocking thread, killing it if it outlives [`TIMEOUT`].
async fn perf(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        let child = Command::new(BIN)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn warrenmqperf");
        let pid = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        match rx.recv_timeout(TIMEOUT) {
            Ok(out) => out.expect("wait for warrenmqperf"),
            Err(_) => {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
                panic!("warrenmqperf did not finish within {TIMEOUT:?}");
            }
        }
    })
    .await
    .expect("runner thread")
}

/// The number `key` holds in a flat JSON object (`None` for `null` or absent).
fn field(json: &str, key: &str) -> Option<f64> {
    let needle = format!("\"{key}\":");
    let at = json.find(&needle)? + needle.len();
    let value: String = json[at..]
        .chars()
        .take_while(|c| !matches!(c, ',' | '}'))
        .collect();
    value.parse().ok()
}

async fn broker() -> (warrenmq::RunningServer, tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config::default();
    config.amqp.bind = "127.0.0.1".parse().unwrap();
    config.amqp.port = 0;
    config.data_dir = dir.path().to_path_buf();
    let running = Server::start(config).await.expect("start broker");
    let uri = format!("amqp://guest:guest@{}/%2f", running.amqp_addr());
    (running, dir, uri)
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_run_loses_nothing_and_reports_json() {
    let (running, _dir, uri) = broker().await;
    let out = perf(args(&[
        "--uri",
        &uri,
        "--duration",
        "1",
        "--producers",
        "2",
        "--consumers",
        "2",
        "--size",
        "100",
        "--confirm",
        "200",
        "--rate",
        "20000",
        "--json",
        "--quiet",
    ]))
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON line on stdout, got: {stdout}");
    let json = lines[0];
    let published = field(json, "published").expect("published");
    assert!(published > 0.0, "{json}");
    assert_eq!(field(json, "consumed"), Some(published), "{json}");
    assert_eq!(field(json, "confirmed"), Some(published), "{json}");
    assert_eq!(field(json, "lost"), Some(0.0), "{json}");
    assert_eq!(field(json, "duplicates"), Some(0.0), "{json}");
    assert!(field(json, "latency_p99_us").is_some(), "{json}");
    assert!(json.contains("\"errors\":[]"), "{json}");
    assert!(stderr.contains("summary (throughput)"), "{stderr}");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_mode_reports_percentiles() {
    let (running, _dir, uri) = broker().await;
    let out = perf(args(&[
        "latency",
        "--uri",
        &uri,
        "--rate",
        "500",
        "--duration",
        "1",
        "--json",
    ]))
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = stdout.trim();
    assert!(json.starts_with("{\"mode\":\"latency\""), "{json}");
    let published = field(json, "published").expect("published");
    // 500/s for 1 s: one at t=0, then one every 2 ms.
    assert!((450.0..=505.0).contains(&published), "{json}");
    assert_eq!(field(json, "lost"), Some(0.0), "{json}");
    let p50 = field(json, "latency_p50_us").expect("p50");
    let p999 = field(json, "latency_p999_us").expect("p99.9");
    assert!(p50 > 0.0 && p50 <= p999, "{json}");
    running.shutdown().await;
}

#[tokio::test]
async fn usage_errors_exit_with_2() {
    let out = perf(args(&["--size", "8"])).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--size must be at least 16"));
    let out = perf(args(&["--no-such-flag"])).await;
    assert_eq!(out.status.code(), Some(2));
}
