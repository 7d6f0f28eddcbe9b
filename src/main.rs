//! The `pgfan` command: parses the command line and hands over to the library.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "pgfan",
    version,
    about = "Spread SQL work over many PostgreSQL servers through PgQ queues"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install or upgrade pgfan's SQL in a database (idempotent; safe to run concurrently).
    Install {
        /// libpq connection string of the target database.
        #[arg(long, env = "PGFAN_DB")]
        db: String,
        /// What the database is in the pgfan topology.
        #[arg(long, value_enum, default_value = "master")]
        role: pgfan::install::Role,
    },
    /// Tick queues, move retry events and rotate tables (pgqd's job, with low latency).
    Ticker(DaemonArgs),
    /// Route push events to the pull queues of their target nodes (on the master).
    Relay(DaemonArgs),
    /// Record task results and reduce finished jobs (on the master).
    Reducer(DaemonArgs),
    /// Run one node (-c config): claim its tasks from the master, execute them, ship the
    /// results. Or manage nodes on the master: add, drain, disable, activate, list.
    Node(NodeArgs),
    /// Submit a job from the command line; --wait follows it per node and prints the result.
    Submit {
        /// libpq connection string of the master database.
        #[arg(long, env = "PGFAN_DB")]
        db: String,
        #[command(flatten)]
        args: pgfan::admin::SubmitArgs,
    },
    /// Show, cancel or retry a job.
    Job {
        /// libpq connection string of the master database.
        #[arg(long, env = "PGFAN_DB", global = true)]
        db: Option<String>,
        #[command(subcommand)]
        cmd: pgfan::admin::JobCmd,
    },
    /// List or replay dead letters.
    DeadLetter {
        /// libpq connection string of the master database.
        #[arg(long, env = "PGFAN_DB", global = true)]
        db: Option<String>,
        #[command(subcommand)]
        cmd: pgfan::admin::DeadLetterCmd,
    },
    /// Show queues, consumers, nodes and recent jobs; exit 1 when something needs attention.
    Status {
        /// libpq connection string of the master database.
        #[arg(long, env = "PGFAN_DB")]
        db: String,
        /// Print JSON instead of the table.
        #[arg(long)]
        json: bool,
        /// A consumer with pending events lagging more than this needs attention.
        #[arg(long, default_value = "60s", value_parser = pgfan::config::parse_duration)]
        max_lag: std::time::Duration,
        /// An active or draining node silent for longer than this needs attention.
        #[arg(long, default_value = "30s", value_parser = pgfan::config::parse_duration)]
        heartbeat_timeout: std::time::Duration,
        /// How many recent jobs to list.
        #[arg(long, default_value_t = 10)]
        jobs: i64,
    },
    /// Consume a queue with the consumer framework and print its events as JSON lines.
    Consume {
        /// libpq connection string of the queue database.
        #[arg(long, env = "PGFAN_DB")]
        db: String,
        #[arg(long)]
        queue: String,
        #[arg(long, default_value = "pgfan_consume")]
        consumer: String,
        /// Print events to stdout as JSON lines (the only action so far).
        #[arg(long)]
        print: bool,
        /// Events fetched per round trip through a cursor (0 = whole batch at once).
        #[arg(long, default_value_t = 300)]
        lazy_fetch: i32,
        /// Stay registered on exit, to go on where this run stopped next time. Without it
        /// a consumer this run registered is unregistered on exit, so that it neither
        /// shows as lagging nor holds back the rotation of the queue's tables.
        #[arg(long)]
        keep: bool,
    },
    /// Start throwaway local clusters and run the whole pipeline end to end.
    Demo,
}

/// The arguments every daemon takes.
#[derive(clap::Args)]
struct DaemonArgs {
    /// Configuration file (.toml or .ini; for the ticker an unmodified pgqd.ini works too).
    #[arg(short, long)]
    config: PathBuf,
    /// Validate the configuration and exit.
    #[arg(long)]
    check_config: bool,
    /// With --check-config: also open every connection the daemon would use.
    #[arg(long, requires = "check_config")]
    connect: bool,
}

/// `pgfan node`: the daemon (`-c`), or a management command on the master.
#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
struct NodeArgs {
    /// Configuration file of the node daemon (.toml or .ini).
    #[arg(short, long)]
    config: Option<PathBuf>,
    /// Validate the configuration and exit.
    #[arg(long)]
    check_config: bool,
    /// With --check-config: also open every connection the daemon would use.
    #[arg(long, requires = "check_config")]
    connect: bool,
    /// libpq connection string of the master database (management commands).
    #[arg(long, env = "PGFAN_DB", global = true)]
    db: Option<String>,
    #[command(subcommand)]
    cmd: Option<pgfan::admin::NodeCmd>,
}

/// A daemon ready to run: its configuration, its pid file and its signal stream.
struct Prepared<C> {
    cfg: C,
    _pid: Option<PidFile>,
    control: tokio::sync::mpsc::UnboundedReceiver<pgfan::signals::Control>,
    /// Told systemd READY=1; sends STOPPING=1 when dropped after the daemon's run.
    _systemd: pgfan::systemd::Session,
}

/// Loads the configuration; with --check-config reports on it and returns None. Otherwise
/// starts logging (to `files(cfg).0` if set), writes the pid file (`files(cfg).1`), listens
/// for signals and tells systemd (if it runs the daemon) that the daemon is ready.
async fn prepare<C, E>(
    args: &DaemonArgs,
    load: impl FnOnce(&Path) -> Result<C, E>,
    files: impl Fn(&C) -> (Option<PathBuf>, Option<PathBuf>),
    connections: impl Fn(&C) -> Vec<pgfan::db::Planned>,
) -> Result<Option<Prepared<C>>>
where
    E: std::error::Error + Send + Sync + 'static,
{
    let cfg = load(&args.config)?;
    if args.check_config {
        if args.connect {
            pgfan::db::try_connections(&connections(&cfg))
                .await
                .map_err(anyhow::Error::msg)?;
        }
        println!("{}: ok", args.config.display());
        return Ok(None);
    }
    let (logfile, pidfile) = files(&cfg);
    init_logging(logfile.as_deref())?;
    let _pid = pidfile.as_deref().map(PidFile::create).transpose()?;
    let (_systemd, control) = pgfan::systemd::Session::ready(pgfan::signals::listen()?);
    Ok(Some(Prepared {
        cfg,
        _pid,
        control,
        _systemd,
    }))
}

/// Errors end the process with one line on stderr and exit status 1; the backtrace that
/// `RUST_BACKTRACE` would add to anyhow's report is for developers, not operators.
fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let outcome = runtime(&cli.command)
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(run(cli)));
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", error_line(&err));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The ticker waits on one statement at a time per database, mostly idle: one thread is
/// enough, and an idle ticker is to cost about what pgqd costs. Over 1,000 idle queues
/// (schedstat, a minute) its process took 22 ms a minute on the multi-threaded runtime and
/// 19 on this one (pgqd 11). The other commands keep a thread per core.
fn runtime(command: &Cmd) -> std::io::Result<tokio::runtime::Runtime> {
    match command {
        Cmd::Ticker(_) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    }
    .enable_all()
    .build()
}

/// The error and its causes, each said once: a context that already quotes its cause (as
/// many database errors do) is not followed by the same text again.
fn error_line(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Cmd::Install { db, role } => {
            init_logging(None)?;
            let mut client = pgfan::db::connect_client(&db)
                .await
                .context("connecting to the database")?;
            let report = pgfan::install::install(&mut client, role)
                .await
                .context("installing")?;
            print!("{report}");
        }
        Cmd::Ticker(args) => {
            let files = |c: &pgfan::ticker::TickerConfig| (c.logfile.clone(), c.pidfile.clone());
            let load = pgfan::ticker::TickerConfig::load;
            let conns = pgfan::ticker::TickerConfig::connections;
            if let Some(d) = prepare(&args, load, files, conns).await? {
                pgfan::db::set_application_name("pgfan ticker".into());
                pgfan::metrics::serve_configured(d.cfg.metrics_listen.as_deref(), "ticker")?;
                pgfan::ticker::run(Some(args.config), d.cfg, d.control).await?;
            }
        }
        Cmd::Relay(args) => {
            let (load, conns) = (
                pgfan::relay::RelayConfig::load,
                pgfan::relay::RelayConfig::connections,
            );
            if let Some(d) = prepare(&args, load, |_| (None, None), conns).await? {
                pgfan::db::set_application_name("pgfan relay".into());
                pgfan::metrics::serve_configured(d.cfg.metrics_listen.as_deref(), "relay")?;
                pgfan::relay::run(Some(&args.config), d.cfg, d.control).await?;
            }
        }
        Cmd::Reducer(args) => {
            let load = pgfan::reducer::ReducerConfig::load;
            let conns = pgfan::reducer::ReducerConfig::connections;
            if let Some(d) = prepare(&args, load, |_| (None, None), conns).await? {
                pgfan::db::set_application_name("pgfan reducer".into());
                pgfan::metrics::serve_configured(d.cfg.metrics_listen.as_deref(), "reducer")?;
                pgfan::reducer::run(Some(&args.config), d.cfg, d.control).await?;
            }
        }
        Cmd::Node(NodeArgs {
            cmd: Some(cmd), db, ..
        }) => pgfan::admin::node(&master(db).await?, &cmd).await?,
        Cmd::Node(NodeArgs {
            config,
            check_config,
            connect,
            ..
        }) => {
            let config = config.context("pass -c <config> to run the node daemon, or a command")?;
            let args = DaemonArgs {
                config,
                check_config,
                connect,
            };
            let files = |c: &pgfan::node::NodeConfig| (c.logfile.clone(), c.pidfile.clone());
            let (load, conns) = (
                pgfan::node::NodeConfig::load,
                pgfan::node::NodeConfig::connections,
            );
            if let Some(d) = prepare(&args, load, files, conns).await? {
                pgfan::db::set_application_name(format!("pgfan node {}", d.cfg.name));
                pgfan::metrics::serve_configured(d.cfg.metrics_listen.as_deref(), "node")?;
                pgfan::node::run(Some(args.config), d.cfg, d.control).await?;
            }
        }
        Cmd::Submit { db, args } => pgfan::admin::submit(&master(Some(db)).await?, &args).await?,
        Cmd::Job { db, cmd } => pgfan::admin::job(&master(db).await?, &cmd).await?,
        Cmd::DeadLetter { db, cmd } => pgfan::admin::dead_letter(&master(db).await?, &cmd).await?,
        Cmd::Status {
            db,
            json,
            max_lag,
            heartbeat_timeout,
            jobs,
        } => {
            init_logging_at(None, "warn")?;
            let client = pgfan::db::connect_client(&db)
                .await
                .context("connecting to the master")?;
            let limits = pgfan::status::Limits {
                max_lag,
                heartbeat_timeout,
                jobs,
            };
            let status = pgfan::status::collect(&client, limits).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", pgfan::status::render(&status));
            }
            if !status.attention.is_empty() {
                std::process::exit(1);
            }
        }
        Cmd::Consume {
            db,
            queue,
            consumer,
            print,
            lazy_fetch,
            keep,
        } => {
            init_logging(None)?;
            anyhow::ensure!(print, "nothing to do: pass --print");
            let client = pgfan::db::connect_client(&db)
                .await
                .context("connecting to the queue database")?;
            let registered: bool = client
                .query_one(
                    "select exists (select 1 from pgq.get_consumer_info($1, $2))",
                    &[&queue, &consumer],
                )
                .await
                .context("reading the queue's consumers")?
                .get(0);
            drop(client);
            let opts_db = db.clone();
            let mut opts =
                pgfan::consumer::ConsumerOptions::new(db, queue.clone(), consumer.clone());
            opts.lazy_fetch = lazy_fetch;
            opts.role = "queue";
            let ran = pgfan::print_consumer::run(opts, pgfan::signals::listen()?).await;
            if !registered && !keep {
                pgfan::db::connect_client(&opts_db)
                    .await
                    .context("connecting to the queue database")?
                    .query_one(
                        "select pgq.unregister_consumer($1, $2)",
                        &[&queue, &consumer],
                    )
                    .await
                    .context("unregistering the consumer this run registered")?;
            }
            ran?;
        }
        Cmd::Demo => {
            // The demo prints its own steps; the daemons inside it log only trouble.
            init_logging_at(None, "warn")?;
            pgfan::demo::run(pgfan::demo::DemoOptions::default()).await?;
        }
    }
    Ok(())
}

/// A session on the master for an operator command.
async fn master(db: Option<String>) -> Result<tokio_postgres::Client> {
    init_logging_at(None, "warn")?;
    let db = db.context("pass --db <conninfo> or set PGFAN_DB")?;
    pgfan::db::connect_client(&db)
        .await
        .context("connecting to the master")
}

/// Logs to stderr (journald picks it up under systemd), or appends to `logfile`.
fn init_logging(logfile: Option<&Path>) -> Result<()> {
    init_logging_at(logfile, "info")
}

/// Like [`init_logging`], with `default` as the level when `PGFAN_LOG` is not set.
/// `PGFAN_LOG_FORMAT=json` logs one JSON object per line; the human format leaves out
/// timestamps on stderr under systemd (`JOURNAL_STREAM` set), as the journal adds its own.
fn init_logging_at(logfile: Option<&Path>, default: &str) -> Result<()> {
    let filter = EnvFilter::try_from_env("PGFAN_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let json = match std::env::var("PGFAN_LOG_FORMAT").as_deref() {
        Err(_) | Ok("" | "human") => false,
        Ok("json") => true,
        Ok(other) => anyhow::bail!("PGFAN_LOG_FORMAT={other:?}: use human or json"),
    };
    let (writer, ansi) = match logfile {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening log file {}", path.display()))?;
            (BoxMakeWriter::new(std::sync::Mutex::new(file)), false)
        }
        None => (
            BoxMakeWriter::new(std::io::stderr),
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
        ),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let journald = logfile.is_none() && std::env::var_os("JOURNAL_STREAM").is_some();
    match (json, journald) {
        (true, _) => builder.json().with_ansi(false).init(),
        (false, true) => builder.without_time().with_ansi(false).init(),
        (false, false) => builder.with_ansi(ansi).init(),
    }
    Ok(())
}

/// A pid file that is removed again when the daemon exits normally.
struct PidFile(PathBuf);

impl PidFile {
    fn create(path: &Path) -> Result<PidFile> {
        std::fs::write(path, format!("{}\n", std::process::id()))
            .with_context(|| format!("writing pid file {}", path.display()))?;
        Ok(PidFile(path.to_path_buf()))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
