//! Throwaway PostgreSQL clusters built from the local server binaries.
//!
//! Used by the integration tests, `pgfan demo` and the benchmarks. A cluster lives in a
//! fresh temporary directory, listens on 127.0.0.1 on a free port and is tuned for a small
//! machine (fsync off, small shared_buffers). When the process runs as root the server
//! binaries run as the `postgres` user, because initdb refuses root.
//!
//! Cleanup does not depend on Rust destructors alone: every cluster has a tiny reaper
//! process holding the read end of a pipe. When this process ends in any way (normal exit,
//! panic, SIGKILL) the pipe closes and the reaper stops the server and removes the directory.

use std::ffi::CString;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::{env, fs};

use std::os::unix::process::CommandExt;

use thiserror::Error;

/// Settings every throwaway cluster gets: durability off, memory small.
const BASE_SETTINGS: &[(&str, &str)] = &[
    ("listen_addresses", "'127.0.0.1'"),
    ("fsync", "off"),
    ("synchronous_commit", "off"),
    ("full_page_writes", "off"),
    ("shared_buffers", "'32MB'"),
    ("max_connections", "100"),
    ("max_wal_size", "'256MB'"),
    ("log_min_messages", "warning"),
    ("log_line_prefix", "'%m [%p] %d '"),
];

/// Errors starting or controlling a cluster.
#[derive(Debug, Error)]
pub enum ClusterError {
    #[error("PostgreSQL server binaries not found (set PGFAN_PG_BINDIR, or put pg_config or initdb on PATH)")]
    NoBinaries,
    #[error("user {0:?} not found; it runs the server when pgfan runs as root")]
    NoUser(String),
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// How to stop a server (pg_ctl's modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    Fast,
    Immediate,
}

impl StopMode {
    fn as_arg(self) -> &'static str {
        match self {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// A running throwaway cluster; dropped = stopped and deleted.
#[derive(Debug)]
pub struct Cluster {
    dir: PathBuf,
    port: u16,
    bindir: PathBuf,
    run_as: Option<String>,
    reaper: Mutex<Option<Child>>,
}

impl Cluster {
    /// Initialises and starts a cluster with the base settings.
    pub fn start() -> Result<Cluster, ClusterError> {
        Self::start_with(&[])
    }

    /// Initialises and starts a cluster with extra `postgresql.conf` settings (values as SQL literals).
    pub fn start_with(settings: &[(&str, &str)]) -> Result<Cluster, ClusterError> {
        let bindir = server_bindir()?;
        let run_as = if unsafe { libc::geteuid() } == 0 {
            Some(env::var("PGFAN_PG_USER").unwrap_or_else(|_| "postgres".into()))
        } else {
            None
        };
        let dir = make_dir(run_as.as_deref())?;
        let reaper = spawn_reaper(&dir, &bindir, run_as.as_deref())?;
        let mut cluster = Cluster {
            dir,
            port: 0,
            bindir,
            run_as,
            reaper: Mutex::new(Some(reaper)),
        };
        cluster.initdb(settings)?;
        cluster.start_on_free_port()?;
        Ok(cluster)
    }

    /// TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Directory holding `data/`, the server log and the unix socket.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Directory of the server binaries in use.
    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    /// libpq connection string for `dbname` as the superuser `postgres`.
    pub fn conninfo(&self, dbname: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={dbname}",
            self.port
        )
    }

    /// Stops the server; the directory is kept so that `restart` can bring it back.
    pub fn stop(&self, mode: StopMode) -> Result<(), ClusterError> {
        let data = self.data_dir();
        self.pg_tool(
            "pg_ctl",
            &["-D", path_str(&data), "-m", mode.as_arg(), "-w", "stop"],
        )
    }

    /// Starts a stopped server again on the same port.
    pub fn restart(&self) -> Result<(), ClusterError> {
        self.pg_ctl_start()
    }

    /// The server log so far (for diagnostics in failing tests).
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = fs::File::open(self.dir.join("postgres.log")) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn initdb(&self, settings: &[(&str, &str)]) -> Result<(), ClusterError> {
        let data = self.data_dir();
        self.pg_tool(
            "initdb",
            &[
                "-D",
                path_str(&data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        )?;
        let mut conf = String::from("\n# pgfan throwaway cluster\n");
        conf.push_str(&format!(
            "unix_socket_directories = '{}'\n",
            self.dir.display()
        ));
        for (k, v) in BASE_SETTINGS.iter().chain(settings) {
            conf.push_str(&format!("{k} = {v}\n"));
        }
        // Lines appended as they are, last: for profiling (e.g. preloading
        // pg_stat_statements) without a code change.
        if let Ok(extra) = env::var("PGFAN_PG_SETTINGS") {
            for line in extra.split(';').filter(|l| !l.trim().is_empty()) {
                conf.push_str(line.trim());
                conf.push('\n');
            }
        }
        let path = data.join("postgresql.conf");
        let mut existing = fs::read_to_string(&path)?;
        existing.push_str(&conf);
        fs::write(path, existing)?;
        Ok(())
    }

    fn start_on_free_port(&mut self) -> Result<(), ClusterError> {
        let mut last = None;
        // Another process may take the port between probing and binding; try a few.
        for _ in 0..5 {
            self.port = free_port()?;
            let port_conf = self.data_dir().join("postgresql.auto.conf");
            fs::write(&port_conf, format!("port = {}\n", self.port))?;
            match self.pg_ctl_start() {
                Ok(()) => return Ok(()),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(ClusterError::Command {
            what: "pg_ctl start".into(),
            detail: "no attempt".into(),
        }))
    }

    fn pg_ctl_start(&self) -> Result<(), ClusterError> {
        let data = self.data_dir();
        let log = self.dir.join("postgres.log");
        self.pg_tool(
            "pg_ctl",
            &[
                "-D",
                path_str(&data),
                "-l",
                path_str(&log),
                "-w",
                "-t",
                "60",
                "start",
            ],
        )
        .map_err(|e| match e {
            ClusterError::Command { what, detail } => ClusterError::Command {
                what,
                detail: format!("{detail}\nserver log:\n{}", self.log()),
            },
            other => other,
        })
    }

    fn pg_tool(&self, tool: &str, args: &[&str]) -> Result<(), ClusterError> {
        let out = tool_command(&self.bindir, self.run_as.as_deref(), tool)
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .output()?;
        if out.status.success() {
            return Ok(());
        }
        Err(ClusterError::Command {
            what: format!("{tool} {}", args.join(" ")),
            detail: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.stop(StopMode::Immediate);
        // Closing the reaper's stdin makes it remove the directory; wait so it is gone on return.
        if let Ok(mut guard) = self.reaper.lock() {
            if let Some(mut child) = guard.take() {
                drop(child.stdin.take());
                let _ = child.wait();
            }
        }
    }
}

/// Finds the server binaries: `$PGFAN_PG_BINDIR`, `pg_config --bindir`, or `initdb` on PATH.
pub fn server_bindir() -> Result<PathBuf, ClusterError> {
    if let Ok(dir) = env::var("PGFAN_PG_BINDIR") {
        return Ok(PathBuf::from(dir));
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && dir.join("initdb").exists() {
            return Ok(dir);
        }
    }
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .find(|p| p.join("initdb").exists() && p.join("pg_ctl").exists())
        .ok_or(ClusterError::NoBinaries)
}

fn tool_command(bindir: &Path, run_as: Option<&str>, tool: &str) -> Command {
    let bin = bindir.join(tool);
    match run_as {
        Some(user) => {
            let mut c = Command::new("runuser");
            c.args(["-u", user, "--"]).arg(bin);
            c
        }
        None => Command::new(bin),
    }
}

fn make_dir(run_as: Option<&str>) -> Result<PathBuf, ClusterError> {
    let dir = tempfile::Builder::new()
        .prefix("pgfan-pg-")
        .tempdir()?
        .keep();
    if let Some(user) = run_as {
        let (uid, gid) = lookup_user(user)?;
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid))?;
    }
    Ok(dir)
}

fn lookup_user(user: &str) -> Result<(u32, u32), ClusterError> {
    let name = CString::new(user).map_err(|_| ClusterError::NoUser(user.into()))?;
    // SAFETY: getpwnam returns NULL or a pointer to static storage valid until the next call;
    // both fields are copied out immediately.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return Err(ClusterError::NoUser(user.into()));
    }
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    Ok((uid, gid))
}

fn spawn_reaper(dir: &Path, bindir: &Path, run_as: Option<&str>) -> Result<Child, ClusterError> {
    let data = dir.join("data");
    let mut stop: Vec<String> = Vec::new();
    if let Some(user) = run_as {
        stop.extend(["runuser".into(), "-u".into(), user.into(), "--".into()]);
    }
    stop.push(bindir.join("pg_ctl").display().to_string());
    stop.extend([
        "-D".into(),
        data.display().to_string(),
        "-m".into(),
        "immediate".into(),
        "-w".into(),
    ]);
    stop.push("stop".into());
    let child = Command::new("sh")
        .arg("-c")
        .arg(r#"dir=$1; shift; cat >/dev/null; if [ -f "$dir/data/postmaster.pid" ]; then "$@" >/dev/null 2>&1; fi; rm -rf "$dir""#)
        .arg("pgfan-reaper")
        .arg(dir)
        .args(&stop)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Own process group: a Ctrl-C to the tests must not kill the reaper before it cleans up.
        .process_group(0)
        .spawn()?;
    Ok(child)
}

fn free_port() -> Result<u16, ClusterError> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}
