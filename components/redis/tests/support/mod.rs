//! A real `redis-server` on a free loopback port, for the tests.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use plugd_redis::Streams;

/// How long the tests wait for something to happen.
pub const WAIT: Duration = Duration::from_secs(10);

/// Where `redis-server` is: `$REDIS_SERVER`, else found on `PATH`.
fn redis_server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("REDIS_SERVER") {
        return PathBuf::from(path);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("redis-server"))
            .find(|candidate| candidate.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "redis-server was not found on PATH (or in $REDIS_SERVER); these tests need a real \
             Redis: install it, for example with `apt-get install redis-server`"
        )
    })
}

/// A free TCP port on 127.0.0.1 (free when asked; the caller retries if it is taken).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("bind an ephemeral port")
}

/// A `redis-server` child process, killed on drop.
pub struct RedisServer {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
    tls: Option<Tls>,
}

/// Certificates for a TLS-only server: a test CA and a server certificate
/// for `localhost` and `127.0.0.1`, as PEM files.
#[derive(Debug, Clone)]
pub struct Tls {
    /// The CA certificate clients must trust.
    pub ca_file: PathBuf,
    cert_file: PathBuf,
    key_file: PathBuf,
}

impl Tls {
    fn generate(dir: &std::path::Path) -> Self {
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "plugd-redis test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA certificate");
        let server_key = rcgen::KeyPair::generate().expect("server key");
        let server =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("server params")
                .signed_by(&server_key, &ca)
                .expect("server certificate");
        let tls = Self {
            ca_file: dir.join("ca.pem"),
            cert_file: dir.join("server.pem"),
            key_file: dir.join("server.key"),
        };
        std::fs::write(&tls.ca_file, ca.pem()).expect("write CA");
        std::fs::write(&tls.cert_file, server.pem()).expect("write certificate");
        std::fs::write(&tls.key_file, server_key.serialize_pem()).expect("write key");
        tls
    }
}

impl RedisServer {
    /// Starts a server on a free port and waits (bounded) until it answers PING.
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// Starts a server that only speaks TLS (no client certificates needed).
    pub fn start_tls() -> Self {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let tls = tls.then(|| Tls::generate(dir.path()));
        for _ in 0..5 {
            let port = free_port();
            if let Some(child) = Self::spawn(&dir, port, tls.as_ref()) {
                return Self {
                    child,
                    port,
                    dir,
                    tls,
                };
            }
        }
        let logs: Vec<String> = std::fs::read_dir(dir.path())
            .into_iter()
            .flatten()
            .flatten()
            .filter(|entry| entry.file_name().to_string_lossy().ends_with(".log"))
            .filter_map(|entry| std::fs::read_to_string(entry.path()).ok())
            .collect();
        panic!("redis-server did not start; its log:\n{}", logs.join("\n"));
    }

    /// The certificates of a TLS server.
    pub fn tls(&self) -> Option<&Tls> {
        self.tls.as_ref()
    }

    /// Starts a server again on the same port (after [`kill`](Self::kill)).
    pub fn restart(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(child) = Self::spawn(&self.dir, self.port, self.tls.as_ref()) {
                self.child = child;
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not restart on {}",
                self.port
            );
        }
    }

    /// Kills the server (SIGKILL).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn spawn(dir: &tempfile::TempDir, port: u16, tls: Option<&Tls>) -> Option<Child> {
        let log = std::fs::File::create(dir.path().join(format!("redis-{port}.log")))
            .expect("create log file");
        let mut command = Command::new(redis_server_binary());
        match tls {
            None => command.arg("--port").arg(port.to_string()),
            Some(tls) => command
                .arg("--port")
                .arg("0")
                .arg("--tls-port")
                .arg(port.to_string())
                .arg("--tls-cert-file")
                .arg(&tls.cert_file)
                .arg("--tls-key-file")
                .arg(&tls.key_file)
                .arg("--tls-ca-cert-file")
                .arg(&tls.ca_file)
                .arg("--tls-auth-clients")
                .arg("no"),
        };
        let mut child = command
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--save")
            .arg("")
            .arg("--appendonly")
            .arg("no")
            .arg("--dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let up = match tls {
                None => ping(port),
                // Listening is enough: the server listens once it is set up.
                Some(_) => TcpStream::connect(("127.0.0.1", port)).is_ok(),
            };
            if up {
                return Some(child);
            }
            if let Ok(Some(_)) = child.try_wait() {
                // Most likely the port was taken meanwhile.
                return None;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on {port} never answered PING"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A plain connection to database `db`, to look at or change the data
    /// behind the component's back.
    pub async fn inspect(&self, db: i64) -> redis::aio::MultiplexedConnection {
        redis::Client::open(format!("redis://{}/{db}", self.address()))
            .expect("client")
            .get_multiplexed_async_connection()
            .await
            .expect("inspection connection")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

/// Polls `check` until it returns `Ok`, for at most `within`; on timeout the panic names what
/// the last `Err` saw.
pub async fn eventually<T, E, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    E: std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + within;
    loop {
        let last = match check().await {
            Ok(value) => return value,
            Err(last) => last,
        };
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}; last seen: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the component's socket accepts connections (connectable, not
/// just present: a killed predecessor leaves its file).
pub async fn socket_accepting(socket: &Path) {
    let deadline = Instant::now() + WAIT;
    while std::os::unix::net::UnixStream::connect(socket).is_err() {
        assert!(
            Instant::now() < deadline,
            "socket never accepted connections"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `topic`'s consumer group exists, so that what is published
/// next is delivered.
pub async fn group_ready(streams: &Streams, topic: &str) {
    eventually(WAIT, "the consumer group", || streams.pending(topic)).await;
}

/// Waits until nothing is pending in `topic`'s consumer group.
/// On timeout the panic names the (id, consumer) pairs still pending.
pub async fn no_pending(streams: &Streams, topic: &str) {
    eventually(WAIT, "no pending entries", || async {
        match streams.pending(topic).await {
            Ok(pending) if pending.is_empty() => Ok(()),
            other => Err(other),
        }
    })
    .await;
}
