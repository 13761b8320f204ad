//! The one harness that starts the `tokenvault` binary as a server: on a free port (or a given
//! one), its log in files, killed and reaped on drop. Every test and benchmark that runs the
//! server goes through [`spawn`] — `server::start` with the integration tests' usual settings, the
//! browser suite's `App` with its own — so the port race is handled here, once.
//!
//! Self-contained (nothing from `super`): the browser suite includes this file alone.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a start may take to answer `/healthz` (two shared cores, other builds beside).
const STARTUP: Duration = Duration::from_secs(90);
/// Starts on a free port before giving up (see [`spawn`]).
const ATTEMPTS: usize = 5;

/// The binary serving on `base`; SIGKILLed and reaped on drop.
pub struct Server {
    pub child: Child,
    /// `http://<ip>:<port>`.
    pub base: String,
    /// The child's stderr (its log).
    pub log: PathBuf,
    pub stdout: PathBuf,
    /// From spawn to the first `200` of `/healthz`.
    pub started_in: Duration,
}

impl Server {
    /// Everything it logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read(&self.log).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The server binary: the one cargo built for this test, or the one `TV_SERVER_BINARY` names (so a
/// benchmark can measure an earlier build against this one in the same run).
pub fn path() -> OsString {
    std::env::var_os("TV_SERVER_BINARY").unwrap_or_else(|| env!("CARGO_BIN_EXE_tokenvault").into())
}

/// A free TCP port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> u16 {
    free_port_on("127.0.0.1")
}

/// A free TCP port on a loopback address such as `127.0.0.2` (bound, read, released), for a
/// server whose port must be known before it starts (another one's settings name it).
pub fn free_port_on(ip: &str) -> u16 {
    let listener = std::net::TcpListener::bind((ip, 0)).unwrap_or_else(|e| panic!("bind {ip}:0: {e}"));
    listener.local_addr().expect("the probe's local address").port()
}

/// Start the binary serving on `ip` and `port` (a free one when `None`) and wait until `/healthz`
/// answers 200; panics with its log when it does not.
///
/// The child inherits no `ROCKET_*` variable; `configure` sets its settings (environment,
/// arguments, working directory — the checkout's by default) for the port picked, then the
/// harness sets `ROCKET_ADDRESS` and `ROCKET_PORT`. Its stderr goes to
/// `logs/server-<port>.stderr.log`, its stdout beside it.
///
/// The port race: a port free when picked may be taken before the server binds it (another
/// test's server, or an outgoing connection's local port). On "Address already in use" a picked
/// port is replaced and the server started again, up to five times in all; a given port is
/// tried once.
pub async fn spawn(ip: &str, port: Option<u16>, logs: &Path, configure: impl Fn(&mut Command, u16)) -> Server {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let picked = port.unwrap_or_else(|| free_port_on(ip));
        match try_spawn(ip, picked, logs, &configure).await {
            Ok(server) => return server,
            Err(why) if port.is_none() && attempt < ATTEMPTS && why.contains("Address already in use") => {
                eprintln!("port {picked} was taken before the server bound it; starting again");
            }
            Err(why) => panic!("{why}"),
        }
    }
}

/// One start on `port`; the reason with the child's log when it did not come up.
async fn try_spawn(ip: &str, port: u16, logs: &Path, configure: &impl Fn(&mut Command, u16)) -> Result<Server, String> {
    std::fs::create_dir_all(logs).expect("the log directory");
    let log = logs.join(format!("server-{port}.stderr.log"));
    let stdout = logs.join(format!("server-{port}.stdout.log"));
    let mut cmd = Command::new(path());
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ROCKET_") {
            cmd.env_remove(key);
        }
    }
    configure(&mut cmd, port);
    cmd.env("ROCKET_ADDRESS", ip)
        .env("ROCKET_PORT", port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::from(std::fs::File::create(&stdout).expect("the stdout file")))
        .stderr(Stdio::from(std::fs::File::create(&log).expect("the log file")));
    let started = Instant::now();
    let child = cmd.spawn().expect("the tokenvault binary starts");
    let mut server = Server { child, base: format!("http://{ip}:{port}"), log, stdout, started_in: Duration::ZERO };
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("an HTTP client");
    let health = format!("{}/healthz", server.base);
    loop {
        if let Ok(r) = http.get(&health).send().await {
            if r.status() == reqwest::StatusCode::OK {
                server.started_in = started.elapsed();
                return Ok(server);
            }
        }
        if let Ok(Some(status)) = server.child.try_wait() {
            return Err(format!("the server on {} exited with {status}:\n{}", server.base, server.log_text()));
        }
        if started.elapsed() > STARTUP {
            return Err(format!("{health} did not answer 200 within {STARTUP:?}:\n{}", server.log_text()));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
