//! A task's result: the JSON document a result event carries (docs/pipeline.md).
//!
//! `{"state": "done"|"failed"|"cancelled", "error": text|null, "columns": [names], "types":
//! [format_type names], "rows": [[text|null, ...], ...]}`; values are PostgreSQL's text output.

use serde::Serialize;
use tokio_postgres::SimpleQueryMessage;

use super::plan::Shape;

/// The outcome of one task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TaskResult {
    pub state: &'static str,
    pub error: Option<String>,
    pub columns: Vec<String>,
    pub types: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
}

impl TaskResult {
    /// A finished task with rows.
    pub fn done(columns: Vec<String>, types: Vec<String>, rows: Vec<Vec<Option<String>>>) -> Self {
        TaskResult {
            state: "done",
            error: None,
            columns,
            types,
            rows,
        }
    }

    /// A failed task.
    pub fn failed(error: impl Into<String>) -> Self {
        TaskResult {
            state: "failed",
            error: Some(error.into()),
            columns: Vec::new(),
            types: Vec::new(),
            rows: Vec::new(),
        }
    }

    /// A task cancelled on the master.
    pub fn cancelled() -> Self {
        TaskResult {
            state: "cancelled",
            error: Some("cancelled on the master".into()),
            ..TaskResult::failed("")
        }
    }

    /// The result of a data change: one row with the number of rows changed.
    pub fn count(n: u64) -> Self {
        TaskResult::done(
            vec!["count".into()],
            vec!["bigint".into()],
            vec![vec![Some(n.to_string())]],
        )
    }

    /// The result of simple-protocol messages: the last statement's rows, typed by `shape`
    /// when it matches, else as `text`.
    pub fn from_messages(msgs: &[SimpleQueryMessage], shape: Option<&Shape>) -> Self {
        let (columns, rows) = last_statement(msgs);
        let types = match shape {
            Some(s) if s.columns == columns => s.types.clone(),
            _ => vec!["text".to_string(); columns.len()],
        };
        TaskResult::done(columns, types, rows)
    }

    pub fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
    }

    /// The JSON to record and ship, or why it cannot be: larger than [`MAX_RESULT_BYTES`].
    pub fn encode(&self) -> Result<String, String> {
        let json = self.json();
        if json.len() > MAX_RESULT_BYTES {
            return Err(format!(
                "result too large: {} rows, {} bytes as JSON (the limit is {MAX_RESULT_BYTES})",
                self.rows.len(),
                json.len()
            ));
        }
        Ok(json)
    }
}

/// Largest result a task may ship; a larger one fails the task (a transactional task's
/// effect is rolled back). Results travel as one queue event and one reducer input.
pub const MAX_RESULT_BYTES: usize = 16 << 20;

type Rows = Vec<Vec<Option<String>>>;

/// Columns and rows of the last statement of a simple query (empty if it returned none).
fn last_statement(msgs: &[SimpleQueryMessage]) -> (Vec<String>, Rows) {
    let mut columns = Vec::new();
    let mut rows = Vec::new();
    let mut described = false;
    for m in msgs {
        match m {
            SimpleQueryMessage::RowDescription(cols) => {
                columns = cols.iter().map(|c| c.name().to_string()).collect();
                rows.clear();
                described = true;
            }
            SimpleQueryMessage::Row(r) => {
                rows.push((0..r.len()).map(|i| r.get(i).map(String::from)).collect());
            }
            SimpleQueryMessage::CommandComplete(_) => {
                if !described {
                    columns.clear();
                    rows.clear();
                }
                described = false;
            }
            _ => {}
        }
    }
    (columns, rows)
}

/// An error as a result reports it: `SQLSTATE: message` (plus detail) for server errors.
pub fn error_text(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => {
            let mut text = format!("{}: {}", db.code().code(), db.message());
            if let Some(detail) = db.detail() {
                text.push_str(&format!(" (DETAIL: {detail})"));
            }
            text
        }
        None => err.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_the_pipeline_shape() {
        let r = TaskResult::done(
            vec!["a".into()],
            vec!["integer".into()],
            vec![vec![Some("1".into())], vec![None]],
        );
        assert_eq!(
            r.json(),
            r#"{"state":"done","error":null,"columns":["a"],"types":["integer"],"rows":[["1"],[null]]}"#
        );
        let c: serde_json::Value = serde_json::from_str(&TaskResult::cancelled().json()).unwrap();
        assert_eq!(c["state"], "cancelled");
        assert_eq!(c["rows"], serde_json::json!([]));
    }
}
