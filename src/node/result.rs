//! A task's result: the JSON document a result event carries (docs/pipeline.md).
//!
//! `{"state": "done"|"failed"|"cancelled", "error": text|null, "columns": [names], "types":
//! [format_type names], "rows": [[text|null, ...], ...]}`; values are PostgreSQL's text output.
//!
//! Rows are written into the document as they arrive ([`Rows`]) and never kept as values: a
//! small value held as a `String` in a `Vec` costs about ten times its JSON. Reading stops
//! as soon as the document would pass [`MAX_RESULT_BYTES`], so what a task returns cannot
//! take more of the daemon's memory than the cap.

use std::fmt::Write as _;
use std::ops::Deref;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Once};

use super::plan::Shape;

/// Largest result a task may ship; a larger one fails the task (a transactional task's
/// effect is rolled back). Results travel as one queue event and one reducer input.
pub const MAX_RESULT_BYTES: usize = 16 << 20;

/// Text this large is followed by handing freed memory back to the system.
pub const TRIM_ABOVE: usize = 1 << 20;

/// Bytes of result shared by the tasks of one batch: they hold their results until the
/// batch records them, so together they stay under one task's cap, and a worker's memory
/// stays bounded by the cap whatever a batch's tasks return.
#[derive(Debug, Default)]
pub struct Budget(AtomicUsize);

impl Budget {
    /// Takes `n` more bytes; false once the batch's results together pass the cap.
    fn take(&self, n: usize) -> bool {
        self.0.fetch_add(n, Ordering::Relaxed) + n <= MAX_RESULT_BYTES
    }
}

/// The outcome of one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskResult {
    pub state: &'static str,
    pub error: Option<String>,
    json: Json,
}

impl TaskResult {
    /// A failed task.
    pub fn failed(error: impl Into<String>) -> Self {
        Self::empty("failed", Some(error.into()))
    }

    /// A task cancelled on the master.
    pub fn cancelled() -> Self {
        Self::empty("cancelled", Some("cancelled on the master".into()))
    }

    /// The result of a data change: one row with the number of rows changed.
    pub fn count(n: u64) -> Self {
        let mut rows = Rows::new(None);
        rows.head(&["count".into()], &["bigint".into()]);
        // One short row is far below the cap.
        let _ = rows.push([Ok::<_, std::convert::Infallible>(Some(&*n.to_string()))]);
        rows.finish()
    }

    fn empty(state: &'static str, error: Option<String>) -> Self {
        let mut text = String::new();
        document_head(&mut text, state, error.as_deref(), &[], &[]);
        text.push_str("]}");
        TaskResult {
            state,
            error,
            json: Json::new(text),
        }
    }

    /// The JSON document (shared, not copied).
    pub fn json(&self) -> Json {
        self.json.clone()
    }

    /// The JSON to record and ship (shared, not copied), or why it cannot be: larger than
    /// [`MAX_RESULT_BYTES`]. Rows are capped while they are read, so only a giant error
    /// text can still fail here.
    pub fn encode(&self) -> Result<Json, String> {
        if self.json.len() > MAX_RESULT_BYTES {
            return Err(format!(
                "result too large: {} bytes as JSON (the limit is {MAX_RESULT_BYTES})",
                self.json.len()
            ));
        }
        Ok(self.json.clone())
    }
}

/// A result's JSON text. Shared, so that handing it on copies nothing; when the last holder
/// of a large one drops it, the freed memory goes back to the system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Json(Arc<String>);

impl Json {
    fn new(text: String) -> Self {
        Json(Arc::new(text))
    }
}

impl Deref for Json {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl Drop for Json {
    fn drop(&mut self) {
        if let Some(text) = Arc::get_mut(&mut self.0) {
            release_if_large(std::mem::take(text));
        }
    }
}

/// The result of one statement (or of a cursor's fetches), written as JSON while its rows
/// arrive: the document up to the rows, then each row, then `]}` when [`Rows::finish`]ed.
pub struct Rows<'a> {
    shape: Option<&'a Shape>,
    /// The batch's shared budget, when the task runs in one.
    budget: Option<&'a Budget>,
    text: String,
    rows: u64,
    /// Whether the statement being read has described its columns (simple protocol: a
    /// statement that returns no rows sends no description, and then the result is empty).
    described: bool,
}

impl<'a> Rows<'a> {
    /// An empty result, typed by `shape` if its columns turn out to match.
    pub fn new(shape: Option<&'a Shape>) -> Self {
        Self::within(shape, None)
    }

    /// [`Rows::new`], its bytes also counted against a batch's `budget`.
    pub fn within(shape: Option<&'a Shape>, budget: Option<&'a Budget>) -> Self {
        map_large_blocks();
        let mut rows = Rows {
            shape,
            budget,
            text: String::new(),
            rows: 0,
            described: false,
        };
        rows.head(&[], &[]);
        rows
    }

    /// A statement's columns: the result starts over with them (only the last statement of a
    /// task counts), typed by the shape when the columns match it, else as `text`.
    pub fn describe(&mut self, columns: Vec<String>) {
        let types = match self.shape {
            Some(s) if s.columns == columns => s.types.clone(),
            _ => vec!["text".to_string(); columns.len()],
        };
        self.head(&columns, &types);
        self.described = true;
    }

    /// A statement ended: one that described no columns (a data change, a SET) leaves an
    /// empty result, as the last statement's rows are the result.
    pub fn complete(&mut self) {
        if !self.described {
            self.head(&[], &[]);
        }
        self.described = false;
    }

    fn head(&mut self, columns: &[String], types: &[String]) {
        self.text.clear();
        self.rows = 0;
        document_head(&mut self.text, "done", None, columns, types);
    }

    /// Adds a row; Ok(false) when the result now passes the cap (reading must stop). An
    /// error reading a value is passed on.
    pub fn push<'v, E>(
        &mut self,
        values: impl IntoIterator<Item = Result<Option<&'v str>, E>>,
    ) -> Result<bool, E> {
        let before = self.text.len();
        if self.rows > 0 {
            self.text.push(',');
        }
        self.text.push('[');
        for (i, value) in values.into_iter().enumerate() {
            if i > 0 {
                self.text.push(',');
            }
            match value? {
                Some(v) => push_json_str(&mut self.text, v),
                None => self.text.push_str("null"),
            }
        }
        self.text.push(']');
        self.rows += 1;
        let shared = self.budget.is_none_or(|b| b.take(self.text.len() - before));
        Ok(shared && self.text.len() + "]}".len() <= MAX_RESULT_BYTES)
    }

    /// Rows of the result so far.
    pub fn count(&self) -> u64 {
        self.rows
    }

    /// Why the result was refused, once [`Rows::push`] said it passed the cap.
    pub fn too_large(&self) -> String {
        format!(
            "result too large: more than {} rows, more than {MAX_RESULT_BYTES} bytes as JSON \
             (the limit is {MAX_RESULT_BYTES}); reading stopped at the limit",
            self.rows.saturating_sub(1)
        )
    }

    /// The finished result.
    pub fn finish(mut self) -> TaskResult {
        let mut text = std::mem::take(&mut self.text);
        text.push_str("]}");
        TaskResult {
            state: "done",
            error: None,
            json: Json::new(text),
        }
    }
}

impl Drop for Rows<'_> {
    fn drop(&mut self) {
        release_if_large(std::mem::take(&mut self.text));
    }
}

/// Writes `{"state":..,"error":..,"columns":[..],"types":[..],"rows":[` (the key order
/// serde gave the struct this replaced).
fn document_head(
    out: &mut String,
    state: &str,
    error: Option<&str>,
    columns: &[String],
    types: &[String],
) {
    out.push_str("{\"state\":");
    push_json_str(out, state);
    out.push_str(",\"error\":");
    match error {
        Some(e) => push_json_str(out, e),
        None => out.push_str("null"),
    }
    for (key, list) in [("columns", columns), ("types", types)] {
        out.push_str(",\"");
        out.push_str(key);
        out.push_str("\":[");
        for (i, item) in list.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_json_str(out, item);
        }
        out.push(']');
    }
    out.push_str(",\"rows\":[");
}

/// Appends `s` as a JSON string, escaped as serde_json does it.
fn push_json_str(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    out.push('"');
    let mut plain = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        // Escaped bytes are ASCII, so `i` is on a character boundary.
        out.push_str(&s[plain..i]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(escape);
        }
        plain = i + 1;
    }
    out.push_str(&s[plain..]);
    out.push('"');
}

/// Frees `text`; after a large one, hands the allocator's free memory back to the system.
fn release_if_large(text: String) {
    let large = text.capacity() > TRIM_ABOVE;
    drop(text);
    if large {
        release_free_memory();
    }
}

/// From now on, blocks of a large result get pages of their own, returned to the system
/// when freed. glibc's default raises this threshold to the largest block freed so far (up
/// to 32 MiB), and then puts the next results inside a thread's heap, whose free top
/// neither free() nor malloc_trim gives back below twice that size: 16 MiB stayed in the
/// daemon after each refused result.
pub fn map_large_blocks() {
    static MAPPED: Once = Once::new();
    MAPPED.call_once(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt only sets a tuning parameter of the allocator, under its lock;
        // the value is in range, and blocks already allocated are not affected.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, TRIM_ABOVE as libc::c_int);
        }
    });
}

/// glibc keeps freed memory in its arenas: after a large result the daemon's RSS would stay
/// at its peak (1.1 GB after a 10M-row result was refused), so it is given back.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of the allocator's own arenas to the
    // kernel, under the arenas' locks; it has no preconditions and touches no live memory.
    unsafe {
        libc::malloc_trim(0);
    }
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
    use std::convert::Infallible;

    fn row<'v>(values: &[Option<&'v str>]) -> Vec<Result<Option<&'v str>, Infallible>> {
        values.iter().map(|v| Ok(*v)).collect()
    }

    #[test]
    fn json_has_the_pipeline_shape() {
        let shape = Shape {
            columns: vec!["a".into()],
            types: vec!["integer".into()],
        };
        let mut r = Rows::new(Some(&shape));
        r.describe(vec!["a".into()]);
        assert_eq!(r.push(row(&[Some("1")])), Ok(true));
        assert_eq!(r.push(row(&[None])), Ok(true));
        r.complete();
        assert_eq!(
            &*r.finish().json(),
            r#"{"state":"done","error":null,"columns":["a"],"types":["integer"],"rows":[["1"],[null]]}"#
        );
        let c: serde_json::Value = serde_json::from_str(&TaskResult::cancelled().json()).unwrap();
        assert_eq!(c["state"], "cancelled");
        assert_eq!(c["rows"], serde_json::json!([]));
        assert_eq!(
            &*TaskResult::count(3).json(),
            r#"{"state":"done","error":null,"columns":["count"],"types":["bigint"],"rows":[["3"]]}"#
        );
    }

    #[test]
    fn only_the_last_statement_counts_and_types_need_matching_columns() {
        let shape = Shape {
            columns: vec!["a".into()],
            types: vec!["integer".into()],
        };
        // select 1 as b; select 2 as c, 3 as d  (columns not the shape's: text)
        let mut r = Rows::new(Some(&shape));
        r.describe(vec!["b".into()]);
        let _ = r.push(row(&[Some("1")]));
        r.complete();
        r.describe(vec!["c".into(), "d".into()]);
        let _ = r.push(row(&[Some("2"), Some("3")]));
        r.complete();
        let v: serde_json::Value = serde_json::from_str(&r.finish().json()).unwrap();
        assert_eq!(v["columns"], serde_json::json!(["c", "d"]));
        assert_eq!(v["types"], serde_json::json!(["text", "text"]));
        assert_eq!(v["rows"], serde_json::json!([["2", "3"]]));
        // select 1 as a; insert ...: the data change, last, leaves no rows
        let mut r = Rows::new(Some(&shape));
        r.describe(vec!["a".into()]);
        let _ = r.push(row(&[Some("1")]));
        r.complete();
        r.complete();
        let v: serde_json::Value = serde_json::from_str(&r.finish().json()).unwrap();
        assert_eq!(v["columns"], serde_json::json!([]));
        assert_eq!(v["rows"], serde_json::json!([]));
    }

    #[test]
    fn strings_are_escaped_as_serde_json_does() {
        let tricky = "a\"b\\c\nd\re\tf\u{8}g\u{c}h\u{0}i\u{1f}j\u{7f}k é ✓ 🦀";
        let mut ours = String::new();
        push_json_str(&mut ours, tricky);
        assert_eq!(ours, serde_json::to_string(tricky).unwrap());
        let failed = TaskResult::failed("bad \"x\"\n");
        let v: serde_json::Value = serde_json::from_str(&failed.json()).unwrap();
        assert_eq!(v["error"], "bad \"x\"\n");
        assert_eq!(failed.error.as_deref(), Some("bad \"x\"\n"));
    }

    #[test]
    fn reading_stops_at_the_cap() {
        let mut r = Rows::new(None);
        r.describe(vec!["pad".into()]);
        let pad = "x".repeat(1 << 20);
        let mut pushed = 0;
        while r.push(row(&[Some(&pad)])) == Ok(true) {
            pushed += 1;
        }
        assert_eq!(pushed, 15, "16 rows of 1 MiB pass 16 MiB with their quotes");
        assert!(r.text.len() <= MAX_RESULT_BYTES + pad.len() + 8);
        let msg = r.too_large();
        assert!(
            msg.starts_with("result too large: more than 15 rows"),
            "{msg}"
        );
    }
}
