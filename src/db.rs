//! Connections to PostgreSQL and the classification of their errors.
//!
//! Every daemon decides what to do with a failed statement from one question: is the
//! connection gone (reconnect), did the statement lose a race that a second try may win
//! (retry), or is the statement itself wrong (fatal for that unit of work)?

use futures_util::{stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream};
use tokio::sync::mpsc;
use tokio_postgres::error::SqlState;
use tokio_postgres::tls::TlsConnect;
use tokio_postgres::{AsyncMessage, CancelToken, Client, Connection};

/// What a caller should do after a database error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The session is unusable: open a new connection (with back-off) and redo the unit.
    Reconnect,
    /// Transient conflict (deadlock, serialization, lock timeout): redo the unit on the same session.
    Retry,
    /// The statement or the data is wrong; repeating it will fail again.
    Fatal,
}

/// Classifies an error from tokio-postgres.
pub fn classify(err: &tokio_postgres::Error) -> ErrorClass {
    if err.is_closed() {
        return ErrorClass::Reconnect;
    }
    match err.code() {
        None => ErrorClass::Reconnect,
        Some(code) => classify_sqlstate(code),
    }
}

/// Classifies a SQLSTATE: class 08 and the shutdown codes mean the server went away.
pub fn classify_sqlstate(code: &SqlState) -> ErrorClass {
    let c = code.code();
    if c.starts_with("08")
        || *code == SqlState::ADMIN_SHUTDOWN
        || *code == SqlState::CRASH_SHUTDOWN
        || *code == SqlState::CANNOT_CONNECT_NOW
        || *code == SqlState::IDLE_SESSION_TIMEOUT
    {
        return ErrorClass::Reconnect;
    }
    if *code == SqlState::T_R_SERIALIZATION_FAILURE
        || *code == SqlState::T_R_DEADLOCK_DETECTED
        || *code == SqlState::LOCK_NOT_AVAILABLE
        || c.starts_with("53")
    {
        return ErrorClass::Retry;
    }
    ErrorClass::Fatal
}

/// An error's text with the server's message ("ERROR: relation ... does not exist"), where
/// tokio-postgres' own Display says only "db error".
pub fn describe(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(d) => format!("{}: {}", d.code().code(), d.message()),
        None => err.to_string(),
    }
}

/// The `application_name` of this process's sessions when their connection string sets
/// none: the daemon and its node, so that `pg_stat_activity` tells daemons apart.
static APPLICATION_NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Names this process's sessions (once; a daemon calls it at start, e.g. "pgfan node n1").
pub fn set_application_name(name: String) {
    let _ = APPLICATION_NAME.set(name);
}

/// A client plus the asynchronous messages (notices, notifications) of its session.
pub struct Session {
    pub client: Client,
    pub messages: mpsc::UnboundedReceiver<AsyncMessage>,
}

/// Opens a session (the password, if the connection string has none, from `PGPASSFILE` or
/// `~/.pgpass`; TLS as libpq's `sslmode` says, see [`crate::tls`]); the connection task
/// ends when the client is dropped or the server goes away.
pub async fn connect(conninfo: &str) -> Result<Session, tokio_postgres::Error> {
    connect_as(conninfo, None).await
}

/// [`connect`] as `user` instead of the connection string's user (the password, if any,
/// then comes from the passfile entry of that user).
pub async fn connect_as(
    conninfo: &str,
    user: Option<&str>,
) -> Result<Session, tokio_postgres::Error> {
    connect_with(conninfo, user, None).await
}

/// [`connect_as`], with `application_name` for this session where the connection string
/// sets none (instead of the process's, [`set_application_name`]).
async fn connect_with(
    conninfo: &str,
    user: Option<&str>,
    application_name: Option<&str>,
) -> Result<Session, tokio_postgres::Error> {
    let (rest, tls) = match crate::tls::split(conninfo) {
        Ok(split) => split,
        Err(err) => return Err(tls_error(err).await),
    };
    let mut cfg: tokio_postgres::Config = rest.parse()?;
    libpq_defaults(&mut cfg);
    cfg.ssl_mode(tls.mode.ssl_mode());
    if let Some(user) = user {
        cfg.user(user);
    }
    crate::passfile::apply(&mut cfg);
    default_keepalives(conninfo, &mut cfg);
    if cfg.get_application_name().is_none() {
        let process = APPLICATION_NAME.get().map_or("pgfan", |n| n.as_str());
        cfg.application_name(application_name.unwrap_or(process));
    }
    let connector = match crate::tls::connector(&tls) {
        Ok(c) => c,
        Err(err) => return Err(tls_error(err).await),
    };
    let (client, connection) = cfg.connect(connector).await?;
    let messages = forward_messages(connection);
    Ok(Session { client, messages })
}

/// What libpq takes from the environment or its built-in defaults when the connection
/// string does not say: `PGHOST` (else the Unix socket directory of Debian's PostgreSQL
/// when it exists, else localhost), `PGPORT`, `PGUSER` (else the operating system user)
/// and `PGDATABASE` (else the user name). So `pgfan install --db 'dbname=app'` behaves as
/// `psql -d app` does.
fn libpq_defaults(cfg: &mut tokio_postgres::Config) {
    let env = |key: &str| std::env::var(key).ok().filter(|v| !v.is_empty());
    if cfg.get_hosts().is_empty() {
        let host = env("PGHOST").unwrap_or_else(|| {
            let socket_dir = "/var/run/postgresql";
            match std::path::Path::new(socket_dir).is_dir() {
                true => socket_dir.to_string(),
                false => "localhost".to_string(),
            }
        });
        for h in host.split(',') {
            cfg.host(h);
        }
    }
    if cfg.get_ports().is_empty() {
        if let Some(port) = env("PGPORT").and_then(|p| p.parse().ok()) {
            cfg.port(port);
        }
    }
    if cfg.get_user().is_none() {
        if let Some(user) = env("PGUSER").or_else(|| env("USER")) {
            cfg.user(&user);
        }
    }
    if cfg.get_dbname().is_none() {
        if let Some(db) = env("PGDATABASE") {
            cfg.dbname(&db);
        }
    }
}

/// TCP keepalive timing where the connection string sets none: a peer behind a cut link
/// is noticed after about a minute instead of Linux's two hours (the session's statements
/// hang until then, and a daemon cannot reconnect).
fn default_keepalives(conninfo: &str, cfg: &mut tokio_postgres::Config) {
    if !conninfo.contains("keepalives_idle") {
        cfg.keepalives_idle(std::time::Duration::from_secs(30));
    }
    if !conninfo.contains("keepalives_interval") {
        cfg.keepalives_interval(std::time::Duration::from_secs(10));
    }
    if !conninfo.contains("keepalives_retries") {
        cfg.keepalives_retries(3);
    }
}

/// Cancels the statement running on the session `token` belongs to, over TLS as the
/// session's connection string says (a cancel request goes through a new connection).
pub async fn cancel(conninfo: &str, token: &CancelToken) -> Result<(), tokio_postgres::Error> {
    let connector = match crate::tls::split(conninfo).and_then(|(_, t)| crate::tls::connector(&t)) {
        Ok(c) => c,
        Err(err) => return Err(tls_error(err).await),
    };
    token.cancel_query(connector).await
}

/// A TLS setup error as the connection error it causes. tokio-postgres makes its errors
/// itself, so the message travels through a TLS handshake that fails with it, run over an
/// in-memory stream whose other end has said yes to TLS: no network traffic.
async fn tls_error(err: crate::tls::TlsError) -> tokio_postgres::Error {
    use tokio::io::AsyncWriteExt;
    let message = err.to_string();
    let mut cfg = tokio_postgres::Config::new();
    cfg.ssl_mode(tokio_postgres::config::SslMode::Require);
    // Never repeats: the peer says nothing but 'S' (yes to the SSL request) and Refuse
    // then fails the handshake, so no attempt can succeed.
    loop {
        let (ours, mut peer) = tokio::io::duplex(64);
        let _ = peer.write_all(b"S").await;
        if let Err(e) = cfg.connect_raw(ours, Refuse(message.clone())).await {
            return e;
        }
    }
}

/// A TLS handshake that fails with its message.
struct Refuse(String);

impl TlsConnect<DuplexStream> for Refuse {
    type Stream = postgres_openssl::TlsStream<DuplexStream>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = std::future::Ready<Result<Self::Stream, Self::Error>>;

    fn connect(self, _stream: DuplexStream) -> Self::Future {
        std::future::ready(Err(self.0.into()))
    }
}

/// Spawns the connection task; it forwards notices (logged) and notifications.
fn forward_messages<S, T>(mut connection: Connection<S, T>) -> mpsc::UnboundedReceiver<AsyncMessage>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (tx, messages) = mpsc::unbounded_channel();
    let mut incoming = stream::poll_fn(move |cx| connection.poll_message(cx));
    tokio::spawn(async move {
        while let Some(msg) = incoming.next().await {
            match msg {
                Ok(m) => {
                    if let AsyncMessage::Notice(n) = &m {
                        tracing::debug!(
                            severity = n.severity(),
                            message = n.message(),
                            "Server notice"
                        );
                    }
                    // A receiver that stopped listening is fine: the session keeps working.
                    let _ = tx.send(m);
                }
                Err(err) => {
                    tracing::debug!(error = %err, "Connection closed");
                    break;
                }
            }
        }
    });
    messages
}

/// Opens a session whose asynchronous messages are only logged.
pub async fn connect_client(conninfo: &str) -> Result<Client, tokio_postgres::Error> {
    Ok(connect(conninfo).await?.client)
}

/// [`connect`] for a daemon's connection to its `role` database ("master", "node"): a
/// failure is logged with where it went ([`endpoint`]), at most once a minute per
/// endpoint with the number of failed attempts in between, so that an operator reading
/// the log knows which connection string to fix and a long outage does not flood it.
pub async fn connect_to(
    role: &'static str,
    conninfo: &str,
) -> Result<Session, tokio_postgres::Error> {
    connect_named(role, conninfo, None).await
}

/// [`connect_to`], the session named `application_name` where the connection string
/// names none: a node daemon's master session is named for its node wherever it runs.
pub async fn connect_named(
    role: &'static str,
    conninfo: &str,
    application_name: Option<&str>,
) -> Result<Session, tokio_postgres::Error> {
    let result = connect_with(conninfo, None, application_name).await;
    let key = (role, endpoint(conninfo));
    let mut failures = CONNECT_FAILURES.lock().unwrap_or_else(|e| e.into_inner());
    match &result {
        Ok(_) => {
            failures.remove(&key);
        }
        Err(err) => {
            let now = std::time::Instant::now();
            let entry = failures.entry(key.clone()).or_insert((now, 0));
            entry.1 += 1;
            if entry.1 == 1 || now.duration_since(entry.0) >= FAILURE_REPORT_PERIOD {
                tracing::warn!(role, endpoint = %key.1, attempts = entry.1, error = %describe(err),
                    "Cannot connect to the {role} database");
                *entry = (now, 0);
            }
        }
    }
    result
}

/// [`connect_to`], the client only.
pub async fn connect_client_to(
    role: &'static str,
    conninfo: &str,
) -> Result<Client, tokio_postgres::Error> {
    Ok(connect_to(role, conninfo).await?.client)
}

/// A connection a daemon would open, for `--check-config --connect`: its role, connection
/// string, and the login it uses instead of the string's (a node's `task_role`).
pub struct Planned {
    pub role: &'static str,
    pub conninfo: String,
    pub user: Option<String>,
}

/// Opens each planned connection once and prints a line for each on stdout; Err names
/// the ones that failed.
pub async fn try_connections(planned: &[Planned]) -> Result<(), String> {
    let mut failed = Vec::new();
    for p in planned {
        let mut place = endpoint(&p.conninfo);
        if let Some(user) = &p.user {
            place = format!("{place} as {user}");
        }
        match connect_as(&p.conninfo, p.user.as_deref()).await {
            Ok(_) => println!("{} database ({place}): connected", p.role),
            Err(err) => {
                println!("{} database ({place}): {}", p.role, describe(&err));
                failed.push(format!("{} ({place})", p.role));
            }
        }
    }
    match failed.is_empty() {
        true => Ok(()),
        false => Err(format!("cannot connect to {}", failed.join(", "))),
    }
}

/// How often a connection that keeps failing is logged again.
const FAILURE_REPORT_PERIOD: std::time::Duration = std::time::Duration::from_secs(60);

type FailureLog = std::collections::HashMap<(&'static str, String), (std::time::Instant, u64)>;

/// Per (role, endpoint): when its failure was last logged, and failures since.
static CONNECT_FAILURES: std::sync::LazyLock<std::sync::Mutex<FailureLog>> =
    std::sync::LazyLock::new(Default::default);

/// Where a connection string leads, as libpq resolves it: host (or socket directory),
/// port, database and user, e.g. `host=10.0.0.5 port=6432 dbname=app user=pgfan_n1`.
/// Never the password.
pub fn endpoint(conninfo: &str) -> String {
    let rest = crate::tls::split(conninfo).map_or_else(|_| conninfo.to_string(), |(r, _)| r);
    let Ok(mut cfg) = rest.parse::<tokio_postgres::Config>() else {
        return "an unreadable connection string".to_string();
    };
    libpq_defaults(&mut cfg);
    let hosts: Vec<String> = cfg
        .get_hosts()
        .iter()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(dir) => dir.display().to_string(),
        })
        .collect();
    let ports: Vec<String> = cfg.get_ports().iter().map(u16::to_string).collect();
    let user = cfg.get_user().unwrap_or("(the login user)");
    format!(
        "host={} port={} dbname={} user={user}",
        if hosts.is_empty() {
            "(default)".to_string()
        } else {
            hosts.join(",")
        },
        if ports.is_empty() {
            "5432".to_string()
        } else {
            ports.join(",")
        },
        cfg.get_dbname().unwrap_or(user),
    )
}

/// One session that several parts of a daemon take turns on: a node daemon's one
/// connection to the master, used by its claim consumer, its shipper and its heartbeat.
/// Each part locks it for a round (a transaction, or a statement), so their statements
/// never interleave; a part that finds no usable session opens one.
pub struct SharedSession {
    role: &'static str,
    application_name: Option<String>,
    slot: tokio::sync::Mutex<Option<Slot>>,
}

/// The open session of a [`SharedSession`]: its connection string, its client, and its
/// notifications until a part adopts them ([`SharedSession::adopt`]).
struct Slot {
    conninfo: String,
    client: Client,
    messages: Option<mpsc::UnboundedReceiver<AsyncMessage>>,
}

impl std::fmt::Debug for SharedSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedSession")
            .field("role", &self.role)
            .finish()
    }
}

/// A locked [`SharedSession`]: its client, for as long as the guard lives.
pub type SharedGuard<'a> = tokio::sync::MappedMutexGuard<'a, Client>;

impl SharedSession {
    /// A shared session to the database of `role` (see [`connect_to`]), not opened yet.
    pub fn new(role: &'static str) -> std::sync::Arc<SharedSession> {
        Self::named(role, None)
    }

    /// [`SharedSession::new`], named `application_name` where its connection string names
    /// none.
    pub fn named(
        role: &'static str,
        application_name: Option<String>,
    ) -> std::sync::Arc<SharedSession> {
        std::sync::Arc::new(SharedSession {
            role,
            application_name,
            slot: tokio::sync::Mutex::new(None),
        })
    }

    /// The name its sessions get where the connection string names none.
    pub fn application_name(&self) -> Option<&str> {
        self.application_name.as_deref()
    }

    /// The session, opened to `conninfo` first when there is none, it is closed, or it was
    /// opened to another connection string (a reload changed it).
    pub async fn lock(&self, conninfo: &str) -> Result<SharedGuard<'_>, tokio_postgres::Error> {
        let mut slot = self.slot.lock().await;
        let entry = match slot.take() {
            Some(s) if s.conninfo == conninfo && !s.client.is_closed() => s,
            _ => {
                let name = self.application_name.as_deref();
                let session = connect_named(self.role, conninfo, name).await?;
                Slot {
                    conninfo: conninfo.to_string(),
                    client: session.client,
                    messages: Some(session.messages),
                }
            }
        };
        Ok(tokio::sync::MutexGuard::map(slot, |s| {
            &mut s.insert(entry).client
        }))
    }

    /// The notifications of the open session to `conninfo`, if no part has taken them yet:
    /// a part that LISTENs (the claim) adopts the session another part opened first,
    /// instead of opening a second one beside it.
    pub async fn adopt(&self, conninfo: &str) -> Option<mpsc::UnboundedReceiver<AsyncMessage>> {
        let mut slot = self.slot.lock().await;
        match slot.as_mut() {
            Some(s) if s.conninfo == conninfo && !s.client.is_closed() => s.messages.take(),
            _ => None,
        }
    }

    /// Closes the session (the next [`SharedSession::lock`] opens a new one).
    pub async fn reset(&self) {
        *self.slot.lock().await = None;
    }

    /// Makes `client`, opened to `conninfo`, the shared session (the one it replaces is
    /// closed once the part using it, if any, lets go).
    pub async fn install(&self, conninfo: &str, client: Client) {
        *self.slot.lock().await = Some(Slot {
            conninfo: conninfo.to_string(),
            client,
            messages: None,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_are_classified() {
        assert_eq!(
            classify_sqlstate(&SqlState::CONNECTION_FAILURE),
            ErrorClass::Reconnect
        );
        assert_eq!(
            classify_sqlstate(&SqlState::ADMIN_SHUTDOWN),
            ErrorClass::Reconnect
        );
        assert_eq!(
            classify_sqlstate(&SqlState::T_R_DEADLOCK_DETECTED),
            ErrorClass::Retry
        );
        assert_eq!(
            classify_sqlstate(&SqlState::TOO_MANY_CONNECTIONS),
            ErrorClass::Retry
        );
        assert_eq!(
            classify_sqlstate(&SqlState::SYNTAX_ERROR),
            ErrorClass::Fatal
        );
        assert_eq!(
            classify_sqlstate(&SqlState::RAISE_EXCEPTION),
            ErrorClass::Fatal
        );
    }
}
