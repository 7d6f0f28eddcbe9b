//! What every case needs: clusters with the benchmark settings, the reference PgQ tools
//! (pgqd, python3-pgq, pgbench) as child processes, and a few timing helpers.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use pgfan::cluster::Cluster;
use pgfan::install::{self, Role};
use tokio_postgres::Client;

/// postgresql.conf of every benchmark cluster, on top of pgfan's throwaway-cluster base
/// (fsync, synchronous_commit and full_page_writes off, listen on 127.0.0.1). Recorded in the
/// results so a reader knows durability was off for pgfan and the baselines alike.
pub const SETTINGS: &[(&str, &str)] = &[
    ("shared_buffers", "'128MB'"),
    ("max_connections", "300"),
    ("max_wal_size", "'1GB'"),
    ("checkpoint_timeout", "'30min'"),
];

/// The settings as reported: base settings of pgfan's clusters plus [`SETTINGS`].
pub fn reported_settings() -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = [
        ("fsync", "off"),
        ("synchronous_commit", "off"),
        ("full_page_writes", "off"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    v.extend(
        SETTINGS
            .iter()
            .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string())),
    );
    v
}

/// The interpreter python3-pgq is installed for (the first python3 on PATH may be another build).
pub const PYTHON: &str = "/usr/bin/python3";
/// pgqd from the Debian package.
pub const PGQD: &str = "/usr/bin/pgqd";

/// Run-wide options and the notes cases leave for the report (settings they used).
pub struct Ctx {
    /// Small sizes, for a smoke run.
    pub quick: bool,
    /// Repetitions per measurement; each row reports the median.
    pub runs: usize,
    /// Clusters preload pg_stat_statements; cases may print [`top_statements`].
    pub profile: bool,
    notes: Mutex<Vec<String>>,
}

impl Ctx {
    pub fn new(quick: bool, runs: usize, profile: bool) -> Ctx {
        Ctx {
            quick,
            runs,
            profile,
            notes: Mutex::new(Vec::new()),
        }
    }

    /// `full` normally, `quick` in a quick run.
    pub fn size(&self, full: usize, quick: usize) -> usize {
        if self.quick {
            quick
        } else {
            full
        }
    }

    /// Records a note (settings, caveats) printed with the results.
    pub fn note(&self, case: &str, text: impl AsRef<str>) {
        let line = format!("{case}: {}", text.as_ref());
        println!("  note {line}");
        if let Ok(mut n) = self.notes.lock() {
            n.push(line);
        }
    }

    pub fn notes(&self) -> Vec<String> {
        self.notes.lock().map(|n| n.clone()).unwrap_or_default()
    }
}

/// Starts a cluster with the benchmark settings.
pub async fn cluster() -> Result<Cluster> {
    Ok(tokio::task::spawn_blocking(|| Cluster::start_with(SETTINGS)).await??)
}

/// Connects to `conninfo`.
pub async fn connect(conninfo: &str) -> Result<Client> {
    Ok(pgfan::db::connect_client(conninfo).await?)
}

/// Creates database `name` on `cluster` and returns a session on it.
pub async fn create_db(cluster: &Cluster, name: &str) -> Result<Client> {
    let admin = connect(&cluster.conninfo("postgres")).await?;
    admin
        .batch_execute(&format!("create database {name}"))
        .await
        .with_context(|| format!("create database {name}"))?;
    connect(&cluster.conninfo(name)).await
}

/// A database with pgfan's bundled queue core (`pgfan install --role queue`).
pub async fn bundled_db(cluster: &Cluster, name: &str) -> Result<Client> {
    let mut c = create_db(cluster, name).await?;
    install::install(&mut c, Role::Queue).await?;
    Ok(c)
}

/// A database with the real PgQ extension (Debian's postgresql-15-pgq3).
pub async fn extension_db(cluster: &Cluster, name: &str) -> Result<Client> {
    let c = create_db(cluster, name).await?;
    c.batch_execute("create extension pgq")
        .await
        .context("create extension pgq (is postgresql-15-pgq3 installed?)")?;
    Ok(c)
}

/// A child process killed (and reaped) when dropped, so a failing case leaves nothing behind.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts pgqd for `dbs` on `cluster` with `extra` ini lines (e.g. "ticker_period = 1").
pub fn start_pgqd(cluster: &Cluster, dbs: &[&str], extra: &str) -> Result<KillOnDrop> {
    start_pgqd_conn(cluster, dbs, "", extra)
}

/// Like [`start_pgqd`], with `conn_extra` appended to pgqd's `base_connstr` (e.g.
/// "application_name=pgqd", so that its server sessions can be told apart).
pub fn start_pgqd_conn(
    cluster: &Cluster,
    dbs: &[&str],
    conn_extra: &str,
    extra: &str,
) -> Result<KillOnDrop> {
    let ini = cluster.dir().join(format!("pgqd-{}.ini", dbs.join("-")));
    std::fs::write(
        &ini,
        format!(
            "[pgqd]\nbase_connstr = host=127.0.0.1 port={} user=postgres {conn_extra}\ndatabase_list = {}\nlogfile = {}\nsyslog = 0\n{extra}\n",
            cluster.port(),
            dbs.join(","),
            cluster.dir().join("pgqd.log").display()
        ),
    )?;
    let child = Command::new(PGQD)
        .arg(&ini)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start pgqd (Debian package pgqd)")?;
    Ok(KillOnDrop(child))
}

/// Path of a baseline script in benches/suite/python/.
pub fn python_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("benches/suite/python")
        .join(name)
}

/// Starts a python3-pgq script with `args`; its output goes to `log`.
pub fn spawn_python(script: &str, args: &[&str], log: &Path) -> Result<KillOnDrop> {
    let out = std::fs::File::create(log)?;
    let child = Command::new(PYTHON)
        .arg(python_script(script))
        .args(args)
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("start {script} under {PYTHON} (python3-pgq)"))?;
    Ok(KillOnDrop(child))
}

/// Runs pgbench against `db` on `cluster` with a script file and returns transactions/s
/// (without initial connection time).
pub fn pgbench(
    cluster: &Cluster,
    db: &str,
    script: &Path,
    clients: u32,
    seconds: u32,
) -> Result<f64> {
    let out = Command::new(cluster.bindir().join("pgbench"))
        .args([
            "-n",
            "-M",
            "prepared",
            "-h",
            "127.0.0.1",
            "-p",
            &cluster.port().to_string(),
            "-U",
            "postgres",
            "-c",
            &clients.to_string(),
            "-j",
            &clients.to_string(),
            "-T",
            &seconds.to_string(),
            "-f",
        ])
        .arg(script)
        .arg(db)
        .output()
        .context("run pgbench")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "pgbench failed: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    text.lines()
        .find_map(|l| {
            let l = l.trim();
            l.strip_prefix("tps = ")
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .with_context(|| format!("no tps in pgbench output: {text}"))
}

/// Polls `sql` (one boolean) every `every` until it is true or `limit` passes; returns when it
/// became true. Used only to notice the end of a benchmark run where no signal exists (rows
/// appearing in a baseline's node database); the polling period bounds the error.
pub async fn until(
    client: &Client,
    sql: &str,
    every: Duration,
    limit: Duration,
) -> Result<Instant> {
    let start = Instant::now();
    loop {
        let done: bool = client.query_one(sql, &[]).await?.get(0);
        if done {
            return Ok(Instant::now());
        }
        if start.elapsed() > limit {
            bail!("not done after {limit:?}: {sql}");
        }
        tokio::time::sleep(every).await;
    }
}

/// Seconds as f64.
pub fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Milliseconds as f64.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The statements that took the most server time in the database at `conninfo` (nested
/// ones included, so a function and the statements inside it both appear), one per line:
/// total ms, calls, mean ms, query. Needs a cluster started with `--profile`.
pub async fn top_statements(conninfo: &str, n: i64) -> Result<String> {
    let c = connect(conninfo).await?;
    c.batch_execute("create extension if not exists pg_stat_statements")
        .await?;
    let rows = c
        .query(
            "select total_exec_time::float8, calls, mean_exec_time::float8,
                    regexp_replace(left(query, 110), '\\s+', ' ', 'g')
               from pg_stat_statements where dbid = (select oid from pg_database
                                                     where datname = current_database())
              order by total_exec_time desc limit $1",
            &[&n],
        )
        .await?;
    let total: f64 = c
        .query_one(
            "select coalesce(sum(total_exec_time), 0)::float8 from pg_stat_statements
              where toplevel and dbid = (select oid from pg_database
                                         where datname = current_database())",
            &[],
        )
        .await?
        .get(0);
    let lines = rows
        .iter()
        .map(|r| {
            format!(
                "{:>9.0} ms {:>8} calls {:>7.3} ms  {}",
                r.get::<_, f64>(0),
                r.get::<_, i64>(1),
                r.get::<_, f64>(2),
                r.get::<_, String>(3)
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    Ok(format!(
        "{total:>9.0} ms in all top-level statements\n{lines}"
    ))
}

/// A process's CPU time (utime + stime, clock ticks) from /proc/<pid>/stat.
pub fn cpu_ticks(pid: i32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; the fields after its ')' start at 3.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc/<pid>/stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Result<u64> { Ok(f.get(n - 3).context("short stat")?.parse()?) };
    Ok(field(14)? + field(15)?)
}

/// User + system CPU seconds this process has used so far (0 if unreadable).
pub fn own_cpu_secs() -> f64 {
    cpu_ticks(std::process::id() as i32).unwrap_or(0) as f64 / 100.0
}

/// The release binary cargo builds for the suite (benches get every binary target built).
pub fn pgfan_exe() -> Result<PathBuf> {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_pgfan"));
    if !exe.is_file() {
        bail!(
            "{} is missing; run the case through cargo bench",
            exe.display()
        );
    }
    Ok(exe)
}

/// A daemon running as a child process; killed if dropped without [`Proc::stop`].
pub struct Proc {
    pub name: String,
    pub child: KillOnDrop,
    pub log: PathBuf,
}

impl Proc {
    /// Starts `pgfan <role> -c <config>`, logging to `<dir>/<name>.log`.
    pub fn spawn(exe: &Path, dir: &Path, name: &str, role: &str, config: &str) -> Result<Proc> {
        let cfg = dir.join(format!("{name}.toml"));
        std::fs::write(&cfg, config)?;
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log)?;
        let child = Command::new(exe)
            .args([role, "-c"])
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("start {} {role}", exe.display()))?;
        Ok(Proc {
            name: name.to_string(),
            child: KillOnDrop(child),
            log,
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.0.id() as i32
    }

    /// Fails (with the end of its log) if the process has exited.
    pub fn alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.0.try_wait()? {
            bail!("{} exited ({status}): {}", self.name, self.log_tail());
        }
        Ok(())
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }

    /// SIGTERM (pgfan's drain) and waits up to 30 s for the exit.
    pub async fn stop(mut self) -> Result<()> {
        // SAFETY: kill(2) on our own child's pid; it is not reaped before this returns.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.0.try_wait()?.is_none() {
            if Instant::now() > deadline {
                bail!("{} did not stop within 30 s of SIGTERM", self.name);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}
