//! Pull events as the node reads them: the urlencoded payload and options of one task.
//!
//! The relay writes `tasks` events into `pgfan_node_<node>` (docs/pipeline.md): `ev_data` is
//! a JSON array of tasks, each with its task id, job id, kind, payload, lane and options.
//! Events of the previous format, one per task, may still be queued (routed before an
//! upgrade, or by the per-event path): `ev_type` = kind, `ev_data` = payload, `ev_extra1` =
//! task id, `ev_extra2` = job id, `ev_extra3` = lane, `ev_extra4` = options (`timeout_ms=<n>`,
//! `tx=0`). Both become [`ClaimRow`]s. Everything here is pure parsing; nothing of it is
//! ever spliced into SQL text.

use thiserror::Error;

use crate::pgq::Event;

/// Why a payload or its options cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PayloadError {
    #[error("malformed urlencoded data: {0}")]
    Encoding(String),
    #[error("unknown task kind {0:?} (expected sql, call or copy)")]
    Kind(String),
    #[error("{kind} task without {key}=")]
    Missing {
        kind: &'static str,
        key: &'static str,
    },
    #[error("{kind} task with more than one {key}=")]
    Repeated {
        kind: &'static str,
        key: &'static str,
    },
    #[error("copy action {0:?} is not ins, upd or del")]
    Action(String),
    #[error("copy column {0:?} given twice")]
    DuplicateColumn(String),
    #[error("copy without any column value")]
    NoColumns,
    #[error("bad option {key}={value:?}")]
    Option { key: String, value: String },
}

/// What a copy task does with its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Insert,
    Update,
    Delete,
}

/// The work of one task, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Work {
    /// Run the statement(s) and return the (last statement's) rows.
    Sql { sql: String },
    /// Call an allow-listed function with positional text arguments.
    Call { func: String, args: Vec<String> },
    /// Apply one row to an allowed table; `table` None = the node's default table.
    Copy {
        action: Action,
        table: Option<String>,
        columns: Vec<(String, String)>,
    },
}

/// Keys that are options in push events and therefore never columns of a copy.
const COPY_OPTION_KEYS: [&str; 9] = [
    "action", "table", "job", "reduce", "policy", "lane", "parallel", "timeout", "tx",
];

impl Work {
    /// Decodes the payload of a task of `kind`.
    pub fn parse(kind: &str, data: &str) -> Result<Work, PayloadError> {
        let pairs = form_decode(data)?;
        match kind {
            "sql" => Ok(Work::Sql {
                sql: single(&pairs, "sql", "sql")?,
            }),
            "call" => Ok(Work::Call {
                func: single(&pairs, "call", "fn")?,
                args: values(&pairs, "arg"),
            }),
            "copy" => parse_copy(&pairs),
            other => Err(PayloadError::Kind(other.into())),
        }
    }
}

fn parse_copy(pairs: &[(String, String)]) -> Result<Work, PayloadError> {
    let action = match single(pairs, "copy", "action")?.as_str() {
        "ins" | "insert" => Action::Insert,
        "upd" | "update" => Action::Update,
        "del" | "delete" => Action::Delete,
        other => return Err(PayloadError::Action(other.into())),
    };
    let table = optional(pairs, "copy", "table")?;
    let mut columns: Vec<(String, String)> = Vec::new();
    for (k, v) in pairs {
        if COPY_OPTION_KEYS.contains(&k.as_str()) {
            continue;
        }
        if columns.iter().any(|(c, _)| c == k) {
            return Err(PayloadError::DuplicateColumn(k.clone()));
        }
        columns.push((k.clone(), v.clone()));
    }
    if columns.is_empty() {
        return Err(PayloadError::NoColumns);
    }
    Ok(Work::Copy {
        action,
        table,
        columns,
    })
}

fn values(pairs: &[(String, String)], key: &str) -> Vec<String> {
    pairs
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .collect()
}

fn optional(
    pairs: &[(String, String)],
    kind: &'static str,
    key: &'static str,
) -> Result<Option<String>, PayloadError> {
    let mut found = values(pairs, key);
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => Err(PayloadError::Repeated { kind, key }),
    }
}

fn single(
    pairs: &[(String, String)],
    kind: &'static str,
    key: &'static str,
) -> Result<String, PayloadError> {
    optional(pairs, kind, key)?.ok_or(PayloadError::Missing { kind, key })
}

/// Execution options of a task (`ev_extra4`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskOptions {
    /// Statement timeout in milliseconds; None = the session's default.
    pub timeout_ms: Option<i32>,
    /// false = run outside a transaction block (at-least-once).
    pub tx: bool,
}

impl Default for TaskOptions {
    fn default() -> Self {
        TaskOptions {
            timeout_ms: None,
            tx: true,
        }
    }
}

impl TaskOptions {
    /// Parses `timeout_ms=<n>&tx=0`; unknown keys are ignored (newer relays may add some).
    pub fn parse(text: Option<&str>) -> Result<TaskOptions, PayloadError> {
        let mut opts = TaskOptions::default();
        for (key, value) in form_decode(text.unwrap_or(""))? {
            let bad = || PayloadError::Option {
                key: key.clone(),
                value: value.clone(),
            };
            match key.as_str() {
                "timeout_ms" => {
                    let ms: i32 = value.trim().parse().map_err(|_| bad())?;
                    opts.timeout_ms = (ms > 0).then_some(ms);
                }
                "tx" => {
                    opts.tx = match value.as_str() {
                        "0" | "false" | "off" => false,
                        "1" | "true" | "on" => true,
                        _ => return Err(bad()),
                    }
                }
                _ => tracing::debug!(key = %key, "Ignoring an unknown task option"),
            }
        }
        Ok(opts)
    }
}

/// One pull event as a row of `pgfan_node.task`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRow {
    pub task_id: i64,
    pub job_id: Option<i64>,
    pub kind: String,
    pub data: String,
    pub lane: Option<String>,
    pub options: TaskOptions,
    /// Set when the event is unusable: the task is recorded as failed with this error.
    pub error: Option<String>,
}

impl ClaimRow {
    /// The task of `ev`, or None when it has no readable task id (nothing to report on).
    pub fn from_event(ev: &Event) -> Option<ClaimRow> {
        let task_id = ev.extra[0].as_deref()?.trim().parse::<i64>().ok()?;
        let job_text = ev.extra[1].as_deref().unwrap_or("");
        let job_id = job_text.trim().parse::<i64>().ok();
        let mut error = job_id
            .is_none()
            .then(|| format!("pull event {} has no valid job id {job_text:?}", ev.id));
        let options = TaskOptions::parse(ev.extra[3].as_deref()).unwrap_or_else(|e| {
            error.get_or_insert(e.to_string());
            TaskOptions::default()
        });
        Some(ClaimRow {
            task_id,
            job_id,
            kind: ev.ev_type.clone().unwrap_or_default(),
            data: ev.data.clone().unwrap_or_default(),
            lane: ev.extra[2].clone().filter(|l| !l.is_empty()),
            options,
            error,
        })
    }
}

/// The `ev_type` of a pull event that carries many tasks.
pub const TASKS_EVENT: &str = "tasks";

/// One task of a `tasks` event, as the relay writes it (pgfan.route_batch).
#[derive(Debug, serde::Deserialize)]
struct PulledTask {
    task: i64,
    job: Option<serde_json::Value>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    data: Option<String>,
    #[serde(default)]
    lane: Option<String>,
    #[serde(default)]
    options: Option<String>,
}

/// Why a `tasks` event cannot be read at all.
#[derive(Debug, Error)]
#[error("pull event {ev_id}: not a JSON array of tasks: {source}")]
pub struct TasksEventError {
    ev_id: i64,
    #[source]
    source: serde_json::Error,
}

/// The task rows of a pull event of either format. An element of a `tasks` event without
/// a task id is skipped (there is nothing to report on); one with a bad job id or options
/// becomes a failed task, as a single-task event does.
pub fn claim_rows_of(ev: &Event) -> Result<Vec<ClaimRow>, TasksEventError> {
    if ev.ev_type.as_deref() != Some(TASKS_EVENT) {
        return Ok(ClaimRow::from_event(ev).into_iter().collect());
    }
    let tasks: Vec<serde_json::Value> = serde_json::from_str(ev.data.as_deref().unwrap_or(""))
        .map_err(|source| TasksEventError {
            ev_id: ev.id,
            source,
        })?;
    Ok(tasks
        .into_iter()
        .filter_map(|t| match serde_json::from_value::<PulledTask>(t) {
            Ok(t) => Some(ClaimRow::from_pulled(ev.id, t)),
            Err(err) => {
                tracing::error!(ev_id = ev.id, error = %err, "Task without a valid task id in a pull event; skipped");
                None
            }
        })
        .collect())
}

impl ClaimRow {
    fn from_pulled(ev_id: i64, t: PulledTask) -> ClaimRow {
        let job_id = match &t.job {
            Some(serde_json::Value::Number(n)) => n.as_i64(),
            Some(serde_json::Value::String(s)) => s.trim().parse().ok(),
            _ => None,
        };
        let mut error = job_id.is_none().then(|| {
            format!(
                "pull event {ev_id}: task {} has no valid job id {:?}",
                t.task, t.job
            )
        });
        let options = TaskOptions::parse(t.options.as_deref()).unwrap_or_else(|e| {
            error.get_or_insert(e.to_string());
            TaskOptions::default()
        });
        ClaimRow {
            task_id: t.task,
            job_id,
            kind: t.kind.unwrap_or_default(),
            data: t.data.unwrap_or_default(),
            lane: t.lane.filter(|l| !l.is_empty()),
            options,
            error,
        }
    }
}

/// Decodes `application/x-www-form-urlencoded` text into ordered pairs, strictly (the
/// relay's decoder: malformed escapes, invalid UTF-8 and NUL bytes are errors).
pub fn form_decode(text: &str) -> Result<Vec<(String, String)>, PayloadError> {
    crate::urlenc::decode(text).map_err(|e| PayloadError::Encoding(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding_handles_plus_percent_and_bare_keys() {
        assert_eq!(
            form_decode("a=1+2&b=%27%3B&c&&d=").unwrap(),
            vec![
                ("a".into(), "1 2".into()),
                ("b".into(), "';".into()),
                ("c".into(), "".into()),
                ("d".into(), "".into())
            ]
        );
        assert!(form_decode("a=%zz").is_err());
        assert!(form_decode("a=%ff").is_err(), "not UTF-8");
        assert!(form_decode("a=%00").is_err(), "NUL");
    }

    #[test]
    fn work_is_parsed_per_kind() {
        assert_eq!(
            Work::parse("sql", "sql=select+1").unwrap(),
            Work::Sql {
                sql: "select 1".into()
            }
        );
        assert_eq!(
            Work::parse("call", "fn=f&arg=1&arg=x").unwrap(),
            Work::Call {
                func: "f".into(),
                args: vec!["1".into(), "x".into()]
            }
        );
        assert_eq!(
            Work::parse("copy", "action=upd&table=t&id=1&name=a").unwrap(),
            Work::Copy {
                action: Action::Update,
                table: Some("t".into()),
                columns: vec![("id".into(), "1".into()), ("name".into(), "a".into())]
            }
        );
        assert!(matches!(
            Work::parse("copy", "action=merge&id=1"),
            Err(PayloadError::Action(_))
        ));
        assert!(matches!(
            Work::parse("copy", "action=ins&id=1&id=2"),
            Err(PayloadError::DuplicateColumn(_))
        ));
        assert!(matches!(
            Work::parse("sql", "sql=a&sql=b"),
            Err(PayloadError::Repeated { .. })
        ));
        assert!(matches!(
            Work::parse("shell", "x=1"),
            Err(PayloadError::Kind(_))
        ));
    }

    fn event(ev_type: &str, data: &str, extra: [Option<&str>; 4]) -> Event {
        Event {
            id: 7,
            time: std::time::SystemTime::UNIX_EPOCH,
            txid: None,
            retry: None,
            ev_type: Some(ev_type.into()),
            data: Some(data.into()),
            extra: extra.map(|x| x.map(String::from)),
        }
    }

    #[test]
    fn both_pull_event_formats_become_claim_rows() {
        let old = event(
            "sql",
            "sql=select+1",
            [Some("5"), Some("2"), Some("l"), None],
        );
        let rows = claim_rows_of(&old).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].task_id, rows[0].job_id), (5, Some(2)));
        let new = event(
            TASKS_EVENT,
            r#"[{"task": 8, "job": 3, "kind": "copy", "data": "action=ins&id=1", "lane": null, "options": "tx=0"},
                {"task": 9, "job": null, "kind": "sql", "data": "sql=select+1", "lane": "a", "options": null},
                {"job": 3},
                {"task": 10, "job": 3, "kind": "sql", "data": "sql=x", "lane": "", "options": "tx=maybe"}]"#,
            [None, None, None, None],
        );
        let rows = claim_rows_of(&new).unwrap();
        assert_eq!(rows.len(), 3, "the element without a task id is skipped");
        assert_eq!(rows[0].task_id, 8);
        assert_eq!(rows[0].job_id, Some(3));
        assert_eq!(rows[0].kind, "copy");
        assert!(!rows[0].options.tx);
        assert_eq!(rows[0].error, None);
        assert_eq!(rows[1].lane.as_deref(), Some("a"));
        assert!(rows[1]
            .error
            .as_deref()
            .unwrap()
            .contains("no valid job id"));
        assert_eq!(rows[2].lane, None);
        assert!(rows[2].error.as_deref().unwrap().contains("tx"));
        assert!(claim_rows_of(&event(TASKS_EVENT, "{", [None, None, None, None])).is_err());
    }

    #[test]
    fn options_parse() {
        assert_eq!(TaskOptions::parse(None).unwrap(), TaskOptions::default());
        assert_eq!(
            TaskOptions::parse(Some("timeout_ms=500&tx=0&future=1")).unwrap(),
            TaskOptions {
                timeout_ms: Some(500),
                tx: false
            }
        );
        assert!(TaskOptions::parse(Some("timeout_ms=soon")).is_err());
        assert!(TaskOptions::parse(Some("tx=maybe")).is_err());
    }
}
