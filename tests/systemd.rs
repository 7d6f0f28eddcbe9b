//! The systemd units pass `systemd-analyze verify`, and a daemon under `Type=notify` says
//! READY, pings the watchdog, and says STOPPING before it exits cleanly on SIGTERM.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const UNITS: [&str; 4] = [
    "pgfan-ticker.service",
    "pgfan-relay.service",
    "pgfan-reducer.service",
    "pgfan-node@.service",
];

/// How long the daemon gets for each step.
const PATIENCE: Duration = Duration::from_secs(10);

/// Copies the units into a temporary directory with `/usr/bin/pgfan` replaced by the
/// built binary, so verify finds an executable.
fn units_with_built_binary() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
    for unit in UNITS {
        let text = std::fs::read_to_string(source.join(unit))
            .unwrap_or_else(|e| panic!("reading systemd/{unit}: {e}"));
        assert!(
            text.contains("/usr/bin/pgfan "),
            "{unit} runs /usr/bin/pgfan"
        );
        let text = text.replace(
            "/usr/bin/pgfan ",
            &format!("{} ", env!("CARGO_BIN_EXE_pgfan")),
        );
        std::fs::write(dir.path().join(unit), text).expect("writing a unit copy");
    }
    dir
}

/// Runs `systemd-analyze verify` on one unit and asserts it succeeds without a word.
fn verify(unit: &str) {
    let dir = units_with_built_binary();
    let output = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(dir.path().join(unit))
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run systemd-analyze ({e}): install the Debian package `systemd`")
        });
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && said.trim().is_empty(),
        "systemd-analyze verify {unit}: {}\n{said}",
        output.status
    );
}

#[test]
fn ticker_unit_verifies() {
    verify("pgfan-ticker.service");
}

#[test]
fn relay_unit_verifies() {
    verify("pgfan-relay.service");
}

#[test]
fn reducer_unit_verifies() {
    verify("pgfan-reducer.service");
}

#[test]
fn node_template_verifies() {
    verify("pgfan-node@.service");
}

#[test]
fn node_instance_verifies() {
    // Loaded from the template beside it, with %i = n1.
    verify("pgfan-node@n1.service");
}

/// The notification socket systemd would listen on, and the daemon's messages on it.
struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
    seen: Vec<String>,
}

impl NotifySocket {
    fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("binding the notify socket");
        NotifySocket {
            socket,
            path,
            seen: Vec::new(),
        }
    }

    /// Waits for a message with `line` among its lines; returns that message.
    fn expect(&mut self, line: &str, stderr: &Path) -> String {
        let deadline = Instant::now() + PATIENCE;
        let mut buf = [0u8; 4096];
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let timeout = left.max(Duration::from_millis(1));
            self.socket
                .set_read_timeout(Some(timeout))
                .expect("setting the read timeout");
            let Ok(n) = self.socket.recv(&mut buf) else {
                break;
            };
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            self.seen.push(msg.clone());
            if msg.lines().any(|l| l == line) {
                return msg;
            }
        }
        panic!(
            "no {line} within {PATIENCE:?}; messages so far: {:?}; daemon stderr:\n{}",
            self.seen,
            std::fs::read_to_string(stderr).unwrap_or_default()
        )
    }
}

/// A started daemon, killed if the test ends before it exits.
struct Daemon(Option<Child>);

impl Daemon {
    /// Starts `pgfan ticker` on a database that does not exist (it keeps retrying) as
    /// systemd would: `NOTIFY_SOCKET` set, watchdog every 200 ms.
    fn ticker(dir: &Path, notify: &Path) -> Daemon {
        let config = dir.join("ticker.toml");
        std::fs::write(
            &config,
            "[ticker]\ndatabase_list = [\"nope\"]\nbase_connstr = \"host=127.0.0.1 port=1\"\n",
        )
        .expect("writing the config");
        let stderr = std::fs::File::create(dir.join("stderr.log")).expect("creating the log");
        let child = Command::new(env!("CARGO_BIN_EXE_pgfan"))
            .arg("ticker")
            .arg("-c")
            .arg(&config)
            .env("NOTIFY_SOCKET", notify)
            .env("WATCHDOG_USEC", "200000")
            .env_remove("WATCHDOG_PID")
            .env("PGFAN_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("starting pgfan ticker");
        Daemon(Some(child))
    }

    fn pid(&self) -> libc::pid_t {
        self.0.as_ref().map_or(0, |c| c.id() as libc::pid_t)
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on the pid of our child, which is not reaped while we hold it.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "sending signal {sig}");
    }

    /// Waits for the exit on another thread, so the wait has a timeout; kills the daemon
    /// if it does not exit in time.
    fn exit_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        let mut child = self.0.take()?;
        let pid = child.id() as libc::pid_t;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        match rx.recv_timeout(limit) {
            Ok(status) => Some(status.expect("waiting for the daemon")),
            Err(_) => {
                // SAFETY: kill(2) on our child, still unreaped: its wait has not returned.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                let _ = rx.recv();
                None
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn daemon_notifies_ready_watchdog_and_stopping() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let stderr = dir.path().join("stderr.log");
    let mut notify = NotifySocket::bind(dir.path());
    let mut daemon = Daemon::ticker(dir.path(), &notify.path);
    let pid = daemon.pid();

    let ready = notify.expect("READY=1", &stderr);
    assert!(
        ready.lines().any(|l| l == format!("MAINPID={pid}")),
        "READY=1 comes with MAINPID={pid}: {ready:?}"
    );
    notify.expect("WATCHDOG=1", &stderr);

    daemon.signal(libc::SIGTERM);
    notify.expect("STOPPING=1", &stderr);
    let status = daemon.exit_within(PATIENCE);
    assert_eq!(
        status.map(|s| s.code()),
        Some(Some(0)),
        "the ticker exits 0 within {PATIENCE:?} of SIGTERM; stderr:\n{}",
        std::fs::read_to_string(&stderr).unwrap_or_default()
    );
}
