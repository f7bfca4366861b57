//! Shared harness for the integration tests.
//!
//! Every test starts a [`TestBroker`]: an in-process WarrenMQ on an ephemeral port
//! with its own temporary data directory, or, when `WARRENMQ_TEST_URL` is set
//! (e.g. `amqp://guest:guest@127.0.0.1:5672/%2f`), an external broker such as
//! RabbitMQ, which is how the assertions in this suite were validated.
//!
//! Tests use unique names ([`unique`]) so they can share one external broker and
//! run in parallel. Nothing here sleeps to assert timing: waits are bounded polls.
#![allow(dead_code, unused_imports)]

pub mod amqprs_util;
pub mod lapin_util;
pub mod raw;

pub use amqprs_util::*;
pub use lapin_util::*;

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long any single expected event may take before a test fails.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Connection parameters parsed from an `amqp://user:pass@host:port/vhost` URL.
#[derive(Clone, Debug)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub vhost: String,
}

impl Target {
    fn parse(url: &str) -> Target {
        let rest = url
            .strip_prefix("amqp://")
            .unwrap_or_else(|| panic!("WARRENMQ_TEST_URL must start with amqp://: {url}"));
        let (authority, path) = match rest.split_once('/') {
            Some((a, p)) => (a, p),
            None => (rest, "%2f"),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            Some(u) => match u.split_once(':') {
                Some((a, b)) => (percent_decode(a), percent_decode(b)),
                None => (percent_decode(u), String::new()),
            },
            None => ("guest".into(), "guest".into()),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().expect("port in WARRENMQ_TEST_URL")),
            None => (hostport.to_string(), 5672),
        };
        let vhost = if path.is_empty() {
            "/".into()
        } else {
            percent_decode(path)
        };
        Target {
            host,
            port,
            user,
            password,
            vhost,
        }
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).expect("percent escape"));
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02x}"),
        })
        .collect()
}

/// A broker under test: in-process WarrenMQ, or the external one named by
/// `WARRENMQ_TEST_URL`.
pub struct TestBroker {
    pub addr: SocketAddr,
    pub target: Target,
    running: Option<warrenmq::RunningServer>,
    /// The in-process configuration (kept for restarts).
    config: Option<warrenmq::Config>,
    /// For an external broker: a shell command that restarts it (alt profile).
    restart_cmd: Option<String>,
    _data_dir: Option<tempfile::TempDir>,
}

/// The vhost, users and limits of the "alt" configuration profile. An external
/// RabbitMQ configured the same way is started by tests/rabbitmq/start-alt-node.sh.
pub mod alt {
    pub const VHOST: &str = "warren-alt";
    /// Full access to VHOST only.
    pub const ALICE: (&str, &str) = ("alice", "alice-pw");
    /// Authenticates, but has access to no vhost.
    pub const BOB: (&str, &str) = ("bob", "bob-pw");
    pub const FRAME_MAX: u32 = 8192;
    pub const CHANNEL_MAX: u16 = 16;
    pub const HEARTBEAT: u16 = 10;
    pub const MAX_MESSAGE_SIZE: u64 = 10_000;
}

/// Applies the alt profile to a WarrenMQ configuration.
pub fn alt_config(c: &mut warrenmq::Config) {
    c.amqp.frame_max = alt::FRAME_MAX;
    c.amqp.channel_max = alt::CHANNEL_MAX;
    c.amqp.heartbeat = alt::HEARTBEAT;
    c.amqp.max_message_size = alt::MAX_MESSAGE_SIZE;
    c.vhosts.names = vec!["/".into(), alt::VHOST.into()];
    let user = |(name, password): (&str, &str), vhosts: &[&str]| warrenmq::config::UserConfig {
        name: name.into(),
        password: password.into(),
        tags: vec![],
        vhosts: vhosts.iter().map(|v| v.to_string()).collect(),
    };
    c.auth.users.push(user(alt::ALICE, &[alt::VHOST]));
    c.auth.users.push(user(alt::BOB, &[]));
}

impl TestBroker {
    /// Starts an in-process broker with the default test configuration.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts an in-process broker after `f` adjusts the configuration.
    /// With an external broker, `f` is ignored.
    pub async fn start_with(f: impl FnOnce(&mut warrenmq::Config)) -> Self {
        if let Ok(url) = std::env::var("WARRENMQ_TEST_URL") {
            return TestBroker::external(&url, None);
        }
        let dir = tempfile::TempDir::new().expect("temp data dir");
        let mut config = warrenmq::Config::default();
        config.amqp.bind = std::net::IpAddr::from([127, 0, 0, 1]);
        config.amqp.port = 0;
        config.data_dir = dir.path().to_path_buf();
        f(&mut config);
        let running = warrenmq::Server::start(config.clone())
            .await
            .expect("start WarrenMQ");
        let addr = running.amqp_addr();
        TestBroker {
            addr,
            target: Self::local_target(addr),
            running: Some(running),
            config: Some(config),
            restart_cmd: None,
            _data_dir: Some(dir),
        }
    }

    /// Starts a broker with the alt profile ([`alt_config`]): in-process, or the
    /// external broker named by `WARRENMQ_TEST_ALT_URL` (configured the same way,
    /// see tests/rabbitmq/start-alt-node.sh). Returns None, so the test skips,
    /// when only `WARRENMQ_TEST_URL` (a default-configured broker) is given.
    pub async fn start_alt() -> Option<Self> {
        if let Ok(url) = std::env::var("WARRENMQ_TEST_ALT_URL") {
            let restart = std::env::var("WARRENMQ_TEST_ALT_RESTART").ok();
            return Some(TestBroker::external(&url, restart));
        }
        if std::env::var("WARRENMQ_TEST_URL").is_ok() {
            eprintln!("skipped: needs WARRENMQ_TEST_ALT_URL (an alt-profile broker)");
            return None;
        }
        Some(Self::start_with(alt_config).await)
    }

    /// Like [`start_alt`](Self::start_alt), but also requires that the broker can
    /// be restarted (in-process, or `WARRENMQ_TEST_ALT_RESTART` is set).
    pub async fn start_alt_restartable() -> Option<Self> {
        let broker = Self::start_alt().await?;
        if broker.is_external() && broker.restart_cmd.is_none() {
            eprintln!(
                "skipped: needs WARRENMQ_TEST_ALT_RESTART (a command restarting the alt broker)"
            );
            return None;
        }
        Some(broker)
    }

    fn external(url: &str, restart_cmd: Option<String>) -> Self {
        let target = Target::parse(url);
        let addr = (target.host.as_str(), target.port)
            .to_socket_addrs()
            .expect("resolve the external broker's host")
            .next()
            .expect("the external broker's host has an address");
        TestBroker {
            addr,
            target,
            running: None,
            config: None,
            restart_cmd,
            _data_dir: None,
        }
    }

    fn local_target(addr: SocketAddr) -> Target {
        Target {
            host: addr.ip().to_string(),
            port: addr.port(),
            user: "guest".into(),
            password: "guest".into(),
            vhost: "/".into(),
        }
    }

    /// Stops and starts the broker again on the same data directory. An
    /// in-process broker may come back on another port: reconnect afterwards
    /// with `lapin()`/`amqprs()`/`url()`.
    pub async fn restart(&mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
            let config = self.config.clone().expect("in-process config");
            let running = warrenmq::Server::start(config)
                .await
                .expect("restart WarrenMQ");
            self.addr = running.amqp_addr();
            self.target = Self::local_target(self.addr);
            self.running = Some(running);
            return;
        }
        let cmd = self.restart_cmd.clone().expect("WARRENMQ_TEST_ALT_RESTART");
        let cmd2 = cmd.clone();
        let status = tokio::task::spawn_blocking(move || {
            std::process::Command::new("sh")
                .arg("-c")
                .arg(&cmd2)
                .status()
        })
        .await
        .unwrap()
        .expect("run the restart command");
        assert!(status.success(), "restart command failed: {cmd}");
        let addr = self.addr;
        let up =
            lapin_util::eventually(
                || async move { tokio::net::TcpStream::connect(addr).await.is_ok() },
            )
            .await;
        assert!(up, "broker did not come back after restart");
    }

    /// The in-process broker's resource alarms (`None` for an external broker), to change
    /// the watermarks at run time like `rabbitmqctl set_vm_memory_high_watermark`.
    pub fn alarms(&self) -> Option<std::sync::Arc<warrenmq::alarm::ResourceAlarms>> {
        self.running.as_ref().map(|r| r.broker().alarms.clone())
    }

    /// The in-process broker's data directory (`None` for an external broker).
    pub fn data_dir(&self) -> Option<std::path::PathBuf> {
        self.config.as_ref().map(|c| c.data_dir.clone())
    }

    /// True when testing an external broker (RabbitMQ) instead of WarrenMQ.
    pub fn is_external(&self) -> bool {
        self.running.is_none()
    }

    /// `amqp://user:pass@host:port/vhost` for the default user and vhost.
    pub fn url(&self) -> String {
        self.url_for(&self.target.user, &self.target.password, &self.target.vhost)
    }

    /// A URL with other credentials or another vhost.
    pub fn url_for(&self, user: &str, password: &str, vhost: &str) -> String {
        format!(
            "amqp://{}:{}@{}:{}/{}",
            percent_encode(user),
            percent_encode(password),
            self.target.host,
            self.target.port,
            percent_encode(vhost)
        )
    }

    /// A new lapin connection (default user and vhost).
    pub async fn lapin(&self) -> lapin::Connection {
        lapin::Connection::connect(&self.url(), lapin::ConnectionProperties::default())
            .await
            .expect("lapin connect")
    }

    /// A lapin connection attempt with other credentials or another vhost.
    pub async fn lapin_as(
        &self,
        user: &str,
        password: &str,
        vhost: &str,
    ) -> lapin::Result<lapin::Connection> {
        within(
            "lapin connect",
            lapin::Connection::connect(
                &self.url_for(user, password, vhost),
                lapin::ConnectionProperties::default(),
            ),
        )
        .await
    }

    /// A new amqprs connection (default user and vhost) with a connection callback
    /// that ignores events; use [`amqprs_with_events`] to observe server closes.
    pub async fn amqprs(&self) -> amqprs::connection::Connection {
        self.amqprs_with_events().await.0
    }

    /// A new amqprs connection plus the stream of server-initiated connection events.
    pub async fn amqprs_with_events(
        &self,
    ) -> (
        amqprs::connection::Connection,
        tokio::sync::mpsc::UnboundedReceiver<ConnEvent>,
    ) {
        let args = amqprs::connection::OpenConnectionArguments::new(
            &self.target.host,
            self.target.port,
            &self.target.user,
            &self.target.password,
        )
        .virtual_host(&self.target.vhost)
        .finish();
        let conn = amqprs::connection::Connection::open(&args)
            .await
            .expect("amqprs connect");
        let (cb, rx) = RecordingConnectionCallback::new();
        conn.register_callback(cb)
            .await
            .expect("register connection callback");
        (conn, rx)
    }

    /// Stops the in-process broker (no-op for an external one).
    pub async fn shutdown(self) {
        if let Some(running) = self.running {
            running.shutdown().await;
        }
    }
}

/// A name no other test (or earlier run against the same external broker) uses.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("warren-test.{prefix}.{}.{nanos:x}.{n}", std::process::id())
}

/// Polls `f` every millisecond until it returns true or `timeout` elapses.
pub async fn wait_for<F: FnMut() -> bool>(mut f: F, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Awaits `fut`, failing the test with `what` if it takes longer than [`TIMEOUT`].
pub async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(TIMEOUT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {TIMEOUT:?} waiting for {what}"),
    }
}
