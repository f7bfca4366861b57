//! The `warrenmq` binary as a user runs it: flags, config errors, exit codes,
//! signals. Also keeps `docs/configuration.md` and `warrenmq.example.toml` in
//! step with `config/default.toml`.

use std::collections::BTreeSet;
use std::io::{BufRead as _, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use warrenmq::config::{Config, DEFAULT_CONFIG_TOML};

const BIN: &str = env!("CARGO_BIN_EXE_warrenmq");
const TIMEOUT: Duration = Duration::from_secs(20);

/// A `warrenmq` command run in a fresh temporary directory with a fixed log filter.
fn warrenmq(dir: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null());
    cmd
}

/// Runs to completion, killing the process if it outlives [`TIMEOUT`].
fn run(mut cmd: Command) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn warrenmq");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(TIMEOUT) {
        Ok(output) => output.expect("wait for warrenmq"),
        Err(_) => {
            signal(pid, "KILL");
            panic!("warrenmq did not exit within {TIMEOUT:?}");
        }
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("warrenmq.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs with `--config` holding `text`; returns the output.
fn run_with_config(text: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), text);
    let mut cmd = warrenmq(dir.path());
    // Flags keep a config that unexpectedly passes off the default port.
    cmd.arg("--config")
        .arg(&path)
        .args(["--bind", "127.0.0.1", "--port", "0"])
        .env_remove("RUST_LOG");
    run(cmd)
}

/// Asserts a config error: exit code 2 and one `warrenmq: error:` line containing `needle`.
fn assert_config_error(out: &Output, needle: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "expected one line, got: {err}");
    assert!(err.starts_with("warrenmq: error: "), "{err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
}

fn signal(pid: u32, name: &str) {
    // The shell's builtin `kill` avoids needing libc (and `unsafe`) in tests.
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("kill -{name} {pid}"))
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid} failed");
}

/// A running broker whose stderr is read line by line on a thread.
struct Broker {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Broker {
    fn start(args: &[&str]) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = warrenmq(dir.path());
        cmd.args(args)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn warrenmq");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Broker {
            child,
            lines,
            seen: Vec::new(),
            _dir: dir,
        }
    }

    /// Waits for a log line containing `needle` and returns it.
    fn wait_for_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!("no line with {needle:?}; saw: {:#?}", self.seen),
            }
        }
    }

    /// The address from the `listening on ADDR` line.
    fn wait_listening(&mut self) -> SocketAddr {
        let line = self.wait_for_line("listening on ");
        let addr = line
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        addr.parse()
            .unwrap_or_else(|e| panic!("bad address {addr:?} in {line:?}: {e}"))
    }

    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("warrenmq did not exit; saw: {:#?}", self.seen);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn help_and_version() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = warrenmq(dir.path());
    cmd.arg("--help");
    let out = run(cmd);
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--config",
        "--port",
        "--bind",
        "--data-dir",
        "--print-default-config",
        "--version",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help:\n{help}");
    }

    let mut cmd = warrenmq(dir.path());
    cmd.arg("--version");
    let out = run(cmd);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        format!("warrenmq {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn print_default_config_is_the_embedded_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = warrenmq(dir.path());
    cmd.arg("--print-default-config");
    let out = run(cmd);
    assert!(out.status.success(), "{}", stderr(&out));
    let printed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(printed, DEFAULT_CONFIG_TOML);
    printed
        .parse::<toml::Table>()
        .expect("printed config is TOML");
    let config = Config::from_toml_str(&printed, None).unwrap();
    assert_eq!(config, Config::default());
}

#[test]
fn unknown_key_exits_2_naming_the_key() {
    let out = run_with_config("[amqp]\nport = 5672\nprot = 1\n");
    assert_config_error(&out, "amqp.prot");
    assert!(stderr(&out).contains("line 3"), "{}", stderr(&out));
}

#[test]
fn wrong_type_exits_2_naming_the_key() {
    let out = run_with_config("[amqp]\nport = \"five\"\n");
    assert_config_error(&out, "amqp.port");
}

#[test]
fn bad_value_exits_2_naming_the_key() {
    let out = run_with_config("[amqp]\nframe_max = 100\n");
    assert_config_error(&out, "amqp.frame_max");
    let out = run_with_config("[log]\nlevel = \"=nonsense=\"\n");
    assert_config_error(&out, "log.level");
}

#[test]
fn missing_config_file_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = warrenmq(dir.path());
    cmd.args(["--config", "does-not-exist.toml"]);
    assert_config_error(&run(cmd), "does-not-exist.toml");
}

#[test]
fn bad_flag_value_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = warrenmq(dir.path());
    cmd.args(["--port", "70000"]);
    let out = run(cmd);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--port"), "{}", stderr(&out));
}

#[test]
fn port_in_use_exits_1_with_a_clear_message() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = warrenmq(dir.path());
    cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string()]);
    let out = run(cmd);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    let last = err.lines().last().unwrap_or_default();
    assert_eq!(
        last,
        format!("warrenmq: error: cannot listen on 127.0.0.1:{port}: Address already in use")
    );
}

#[test]
fn sigterm_and_sigint_shut_down_cleanly() {
    for sig in ["TERM", "INT"] {
        let mut broker = Broker::start(&["--bind", "127.0.0.1", "--port", "0"]);
        let addr = broker.wait_listening();
        assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
        signal(broker.child.id(), sig);
        let status = broker.wait_exit();
        assert!(
            status.success(),
            "SIG{sig}: {status:?}; saw {:#?}",
            broker.seen
        );
    }
}

#[test]
fn config_file_and_flags_combine() {
    // The file sets the bind address; the flag overrides the port.
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "[amqp]\nbind = \"127.0.0.1\"\nport = 1\n");
    let mut broker = Broker::start(&["--config", path.to_str().unwrap(), "--port", "0"]);
    let addr = broker.wait_listening();
    assert_eq!(addr.ip().to_string(), "127.0.0.1");
    assert_ne!(addr.port(), 1);
    signal(broker.child.id(), "TERM");
    assert!(broker.wait_exit().success());
}

// ---- docs and example file stay in step with config/default.toml ----------

fn repo_file(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Dotted paths of every key (arrays of tables contribute their entries' keys
/// as `auth.users.name`).
fn dotted_keys(table: &toml::Table, prefix: &str, out: &mut BTreeSet<String>) {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            toml::Value::Table(t) => dotted_keys(t, &path, out),
            toml::Value::Array(items) if items.iter().all(toml::Value::is_table) => {
                out.insert(path.clone());
                for item in items {
                    dotted_keys(item.as_table().unwrap(), &path, out);
                }
            }
            _ => {
                out.insert(path);
            }
        }
    }
}

fn default_keys() -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    dotted_keys(&DEFAULT_CONFIG_TOML.parse().unwrap(), "", &mut keys);
    keys
}

#[test]
fn every_default_key_is_documented() {
    let docs = repo_file("docs/configuration.md");
    let keys = default_keys();
    assert!(keys.contains("amqp.port") && keys.contains("auth.users.name"));
    let missing: Vec<_> = keys
        .iter()
        .filter(|k| !docs.contains(&format!("`{k}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "keys missing from docs/configuration.md: {missing:?}"
    );
}

#[test]
fn documented_keys_exist() {
    // Rows of the "## Keys" tables look like "| `amqp.port` | integer | ...".
    let docs = repo_file("docs/configuration.md");
    let section = docs
        .split("\n## ")
        .find(|s| s.starts_with("Keys"))
        .expect("a '## Keys' section");
    let keys = default_keys();
    let mut rows = 0;
    for line in section.lines() {
        let Some(rest) = line.strip_prefix("| `") else {
            continue;
        };
        let key = rest.split('`').next().unwrap();
        assert!(keys.contains(key), "docs document unknown key `{key}`");
        rows += 1;
    }
    assert_eq!(rows, keys.len(), "one row per key");
}

#[test]
fn example_config_equals_the_default() {
    let example = repo_file("warrenmq.example.toml");
    let mut keys = BTreeSet::new();
    dotted_keys(&example.parse().unwrap(), "", &mut keys);
    assert_eq!(keys, default_keys(), "example and default differ in keys");
    let config = Config::from_toml_str(&example, Some("warrenmq.example.toml")).unwrap();
    assert_eq!(config, Config::default());
}
