//! A throwaway PgBouncer in transaction mode in front of a throwaway cluster: what the
//! pooled-mode test and benchmark put between node daemons and the master.
//!
//! Debian's `pgbouncer` binary (`/usr/sbin/pgbouncer`, or `PGFAN_PGBOUNCER`). PgBouncer
//! refuses to run as root, so as root it runs as the cluster's user (as the server does);
//! its files are then made readable by that user. Trust authentication (the clusters
//! trust local logins), the user `postgres` in its auth file.

use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use std::{env, fs};

use crate::cluster::{Cluster, ClusterError};

/// How long PgBouncer may take to listen after its start.
const START_LIMIT: Duration = Duration::from_secs(10);

/// A running PgBouncer; dropped = killed and its directory deleted.
pub struct Bouncer {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl Bouncer {
    /// Starts PgBouncer in transaction mode for every database of `target`, with at most
    /// `pool_size` server connections per database.
    pub fn start(target: &Cluster, pool_size: u32) -> Result<Bouncer, ClusterError> {
        Bouncer::start_for(target, pool_size, &[])
    }

    /// [`Bouncer::start`], also letting the `logins` in (besides `postgres`).
    pub fn start_for(
        target: &Cluster,
        pool_size: u32,
        logins: &[&str],
    ) -> Result<Bouncer, ClusterError> {
        let dir = tempfile::Builder::new()
            .prefix("pgfan-bouncer-")
            .tempdir()?;
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let users = dir.path().join("users.txt");
        let ini = format!(
            "[databases]\n* = host=127.0.0.1 port={}\n\
             [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
             auth_type = trust\nauth_file = {}\npool_mode = transaction\n\
             default_pool_size = {pool_size}\nmax_client_conn = 5000\n\
             ignore_startup_parameters = extra_float_digits,options\n",
            target.port(),
            users.display()
        );
        readable(&dir.path().join("pgbouncer.ini"), &ini)?;
        let list: String = std::iter::once("postgres")
            .chain(logins.iter().copied())
            .map(|u| format!("\"{u}\" \"\"\n"))
            .collect();
        readable(&users, &list)?;
        let mut b = Bouncer {
            dir,
            port,
            child: None,
        };
        b.run()?;
        Ok(b)
    }

    /// libpq connection string of database `dbname` through PgBouncer.
    pub fn conninfo(&self, dbname: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={dbname}",
            self.port
        )
    }

    /// Kills PgBouncer (every connection through it breaks) and starts it again on the
    /// same port.
    pub fn restart(&mut self) -> Result<(), ClusterError> {
        self.kill();
        self.run()
    }

    fn run(&mut self) -> Result<(), ClusterError> {
        let bin = env::var("PGFAN_PGBOUNCER").unwrap_or_else(|_| "/usr/sbin/pgbouncer".into());
        let mut cmd = if unsafe { libc::geteuid() } == 0 {
            let mut c = Command::new("runuser");
            let user = env::var("PGFAN_PG_USER").unwrap_or_else(|_| "postgres".into());
            // runuser's PAM session sets the user's default open-file limit (1,024 on
            // Debian), too few for a fleet's clients: raised to the hard limit first.
            c.args([
                "-u",
                &user,
                "--",
                "sh",
                "-c",
                r#"ulimit -n "$(ulimit -Hn)"; exec "$0" "$@""#,
                &bin,
            ]);
            c
        } else {
            Command::new(&bin)
        };
        // Its own process group: as root the child is `runuser`, and killing it alone
        // would leave PgBouncer running, orphaned; the group is killed as a whole.
        let child = cmd
            .process_group(0)
            .arg(self.dir.path().join("pgbouncer.ini"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| ClusterError::Command {
                what: format!("starting {bin}"),
                detail: e.to_string(),
            })?;
        self.child = Some(child);
        // Listening once a TCP connect succeeds (it binds before it serves).
        let deadline = Instant::now() + START_LIMIT;
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() > deadline {
                return Err(ClusterError::Command {
                    what: "pgbouncer".into(),
                    detail: format!("not listening on port {} after {START_LIMIT:?}", self.port),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(pid) = i32::try_from(child.id()) {
                // SAFETY: kill(2) on the process group of our own, not yet reaped child.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Writes a file PgBouncer's user can read.
fn readable(path: &Path, text: &str) -> Result<(), ClusterError> {
    fs::write(path, text)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o644))?;
    Ok(())
}
