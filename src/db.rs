//! Connections to PostgreSQL and the classification of their errors.
//!
//! Every daemon decides what to do with a failed statement from one question: is the
//! connection gone (reconnect), did the statement lose a race that a second try may win
//! (retry), or is the statement itself wrong (fatal for that unit of work)?

use futures_util::{stream, StreamExt};
use tokio::sync::mpsc;
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, Client, NoTls};

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

/// A client plus the asynchronous messages (notices, notifications) of its session.
pub struct Session {
    pub client: Client,
    pub messages: mpsc::UnboundedReceiver<AsyncMessage>,
}

/// Opens a session (the password, if the connection string has none, from `PGPASSFILE` or
/// `~/.pgpass`); the connection task ends when the client is dropped or the server goes away.
pub async fn connect(conninfo: &str) -> Result<Session, tokio_postgres::Error> {
    let mut cfg: tokio_postgres::Config = conninfo.parse()?;
    crate::passfile::apply(&mut cfg);
    let (client, mut connection) = cfg.connect(NoTls).await?;
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
    Ok(Session { client, messages })
}

/// Opens a session whose asynchronous messages are only logged.
pub async fn connect_client(conninfo: &str) -> Result<Client, tokio_postgres::Error> {
    Ok(connect(conninfo).await?.client)
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
