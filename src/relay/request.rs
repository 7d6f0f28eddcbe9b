//! A push event's request: what to run (per kind), and the job options.
//!
//! The same shape comes from two places: a raw event's urlencoded `ev_data`, and the
//! `params` of a job row written by `pgfan.submit` (key -> array of values). Both are
//! turned into ordered key/value pairs and checked here, so a mistake gives the same
//! error whichever way the job was submitted (docs/pipeline.md lists the keys).

use std::time::Duration;

use thiserror::Error;

use crate::urlenc::{self, DecodeError};

/// Largest request (keys and values, decoded) the relay routes. Every byte is stored again
/// in the job, each task and each pull event, and a node holds the whole task in memory;
/// results have the same cap for the same reasons (`MAX_RESULT_BYTES` on the node).
pub const MAX_REQUEST_BYTES: usize = 16 << 20;

/// Longest timeout a task can have: PostgreSQL's `statement_timeout` is an int of
/// milliseconds, and the node sets it from this.
const MAX_TIMEOUT: Duration = Duration::from_millis(i32::MAX as u64);

/// Keys that are options, never copy columns.
const OPTION_KEYS: [&str; 9] = [
    "action", "table", "job", "reduce", "policy", "lane", "parallel", "timeout", "tx",
];

/// Why a request cannot be routed; the text becomes the job's error and the dead letter's.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RequestError {
    #[error("pgfan: malformed event data: {0}")]
    Decode(#[from] DecodeError),
    #[error("pgfan: unknown event type {0:?} (expected sql, call or copy)")]
    UnknownKind(String),
    #[error("pgfan: {kind} event without {key}=")]
    Missing {
        kind: &'static str,
        key: &'static str,
    },
    #[error("pgfan: {key}= given more than once")]
    Repeated { key: &'static str },
    #[error("pgfan: invalid {key}={value:?}: {why}")]
    Invalid {
        key: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("pgfan: copy event without column values")]
    NoColumns,
    #[error("pgfan: copy column {0:?} given twice")]
    DuplicateColumn(String),
    #[error(
        "pgfan: event data too large: {bytes} bytes (the limit is {})",
        MAX_REQUEST_BYTES
    )]
    TooLarge { bytes: usize },
    #[error("pgfan: job params are not an object of string arrays")]
    Params,
}

/// What a task runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sql,
    Call,
    Copy,
}

impl Kind {
    pub fn parse(ev_type: &str) -> Result<Kind, RequestError> {
        match ev_type {
            "sql" => Ok(Kind::Sql),
            "call" => Ok(Kind::Call),
            "copy" => Ok(Kind::Copy),
            other => Err(RequestError::UnknownKind(other.to_string())),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Sql => "sql",
            Kind::Call => "call",
            Kind::Copy => "copy",
        }
    }
}

/// A checked request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub kind: Kind,
    /// Every key/value pair, in order (stored as the job's params for raw events).
    pub pairs: Vec<(String, String)>,
    /// One urlencoded payload per task on each target node.
    pub payloads: Vec<String>,
    pub job: Option<i64>,
    pub reduce: Option<String>,
    pub policy: Option<String>,
    pub lane: Option<String>,
    pub parallel: Option<u32>,
    pub timeout: Option<Duration>,
    pub tx: bool,
}

impl Request {
    /// Parses a raw event's data.
    pub fn from_event(kind: Kind, data: &str) -> Result<Request, RequestError> {
        Request::from_pairs(kind, urlenc::decode(data)?)
    }

    /// Parses a job row's params (`{"sql": ["..."], "lane": ["a"]}`).
    pub fn from_params(kind: Kind, params: &serde_json::Value) -> Result<Request, RequestError> {
        let obj = params.as_object().ok_or(RequestError::Params)?;
        let mut pairs = Vec::new();
        for (key, values) in obj {
            for v in values.as_array().ok_or(RequestError::Params)? {
                let v = v.as_str().ok_or(RequestError::Params)?;
                pairs.push((key.clone(), v.to_string()));
            }
        }
        Request::from_pairs(kind, pairs)
    }

    /// Checks decoded key/value pairs.
    pub fn from_pairs(kind: Kind, pairs: Vec<(String, String)>) -> Result<Request, RequestError> {
        let bytes = pairs.iter().map(|(k, v)| k.len() + v.len()).sum();
        if bytes > MAX_REQUEST_BYTES {
            return Err(RequestError::TooLarge { bytes });
        }
        let one = |key: &'static str| single(&pairs, key);
        let job = job_of(&pairs)?;
        let parallel = one("parallel")?.map(parse_parallel).transpose()?;
        let timeout = one("timeout")?.map(parse_timeout).transpose()?;
        let tx = match one("tx")? {
            None | Some("1") | Some("true") => true,
            Some("0") | Some("false") => false,
            Some(v) => return Err(invalid("tx", v, "must be 0 or 1")),
        };
        let policy = one("policy")?.map(str::to_string);
        if let Some(p) = &policy {
            check_policy(p)?;
        }
        let payloads = payloads(kind, &pairs)?;
        Ok(Request {
            kind,
            job,
            reduce: one("reduce")?.map(str::to_string),
            lane: one("lane")?.filter(|l| !l.is_empty()).map(str::to_string),
            policy,
            parallel,
            timeout,
            tx,
            payloads,
            pairs,
        })
    }

    /// The lane of each task: the request's lane, or with `parallel`, one of `parallel`
    /// lanes per job so that at most that many run at once on a node.
    pub fn lanes(&self, job_id: i64) -> Vec<Option<String>> {
        (0..self.payloads.len())
            .map(|i| match (&self.lane, self.parallel) {
                (Some(lane), _) => Some(lane.clone()),
                (None, Some(p)) if self.payloads.len() > 1 => {
                    Some(format!("{job_id}:{}", i as u32 % p))
                }
                _ => None,
            })
            .collect()
    }

    /// The pull event's options field: `timeout_ms=..&tx=0`, empty when both are default.
    pub fn options(&self) -> String {
        let timeout = self.timeout.map(|t| t.as_millis().to_string());
        let mut pairs = Vec::new();
        if let Some(ms) = &timeout {
            pairs.push(("timeout_ms", ms.as_str()));
        }
        if !self.tx {
            pairs.push(("tx", "0"));
        }
        urlenc::encode(pairs)
    }

    /// The params jsonb of a job made from this request: key -> array of values.
    pub fn params_json(&self) -> serde_json::Value {
        let mut map = serde_json::Map::new();
        for (k, v) in &self.pairs {
            let entry = map
                .entry(k.clone())
                .or_insert_with(|| serde_json::Value::Array(Vec::new()));
            if let serde_json::Value::Array(values) = entry {
                values.push(serde_json::Value::String(v.clone()));
            }
        }
        serde_json::Value::Object(map)
    }
}

fn payloads(kind: Kind, pairs: &[(String, String)]) -> Result<Vec<String>, RequestError> {
    match kind {
        Kind::Sql => {
            let sqls: Vec<String> = values(pairs, "sql")
                .filter(|s| !s.trim().is_empty())
                .map(|s| urlenc::encode([("sql", s)]))
                .collect();
            if sqls.is_empty() {
                return Err(RequestError::Missing {
                    kind: "sql",
                    key: "sql",
                });
            }
            Ok(sqls)
        }
        Kind::Call => {
            let func =
                single(pairs, "fn")?
                    .filter(|f| !f.is_empty())
                    .ok_or(RequestError::Missing {
                        kind: "call",
                        key: "fn",
                    })?;
            let call =
                std::iter::once(("fn", func)).chain(values(pairs, "arg").map(|a| ("arg", a)));
            Ok(vec![urlenc::encode(call)])
        }
        Kind::Copy => Ok(vec![copy_payload(pairs)?]),
    }
}

/// Every value of `key`, in order.
fn values<'a>(pairs: &'a [(String, String)], key: &'a str) -> impl Iterator<Item = &'a str> {
    pairs
        .iter()
        .filter(move |(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn copy_payload(pairs: &[(String, String)]) -> Result<String, RequestError> {
    let action = single(pairs, "action")?.ok_or(RequestError::Missing {
        kind: "copy",
        key: "action",
    })?;
    if !matches!(action, "ins" | "upd" | "del") {
        return Err(invalid("action", action, "must be ins, upd or del"));
    }
    let mut out = vec![("action", action)];
    if let Some(table) = single(pairs, "table")? {
        out.push(("table", table));
    }
    let columns: Vec<(&str, &str)> = pairs
        .iter()
        .filter(|(k, _)| !OPTION_KEYS.contains(&k.as_str()))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    if columns.is_empty() {
        return Err(RequestError::NoColumns);
    }
    // The node refuses a row that sets a column twice; refusing it here names the event.
    for (i, (c, _)) in columns.iter().enumerate() {
        if columns[..i].iter().any(|(k, _)| k == c) {
            return Err(RequestError::DuplicateColumn(c.to_string()));
        }
    }
    out.extend(columns);
    Ok(urlenc::encode(out))
}

/// The job id named by `job=`, if any.
pub fn job_of(pairs: &[(String, String)]) -> Result<Option<i64>, RequestError> {
    single(pairs, "job")?
        .map(|v| parse_num(v, "job", "not a job id"))
        .transpose()
}

/// The value of a key that may appear at most once.
fn single<'a>(
    pairs: &'a [(String, String)],
    key: &'static str,
) -> Result<Option<&'a str>, RequestError> {
    let mut found = pairs
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str());
    let first = found.next();
    if found.next().is_some() {
        return Err(RequestError::Repeated { key });
    }
    Ok(first)
}

fn parse_parallel(v: &str) -> Result<u32, RequestError> {
    let why = "not a positive integer";
    let p = parse_num(v, "parallel", why)?;
    u32::try_from(p)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| invalid("parallel", v, why))
}

fn parse_timeout(v: &str) -> Result<Duration, RequestError> {
    let t = crate::config::parse_duration(v)
        .map_err(|_| invalid("timeout", v, "not a duration like 500ms, 5s or 2m"))?;
    if t > MAX_TIMEOUT {
        // The node could not set it; failing here names the event instead of a task.
        return Err(invalid(
            "timeout",
            v,
            "longer than 24 days, PostgreSQL's largest statement_timeout",
        ));
    }
    Ok(t)
}

fn parse_num(v: &str, key: &'static str, why: &'static str) -> Result<i64, RequestError> {
    v.trim().parse().map_err(|_| invalid(key, v, why))
}

fn check_policy(p: &str) -> Result<(), RequestError> {
    let ok = match p.strip_prefix("k:") {
        Some(n) => n.parse::<u32>().is_ok_and(|n| n > 0 && n < 1_000_000_000),
        None => p == "all" || p == "failfast",
    };
    if ok {
        Ok(())
    } else {
        Err(invalid("policy", p, "must be all, failfast or k:<n>"))
    }
}

fn invalid(key: &'static str, value: &str, why: &'static str) -> RequestError {
    RequestError::Invalid {
        key,
        value: value.to_string(),
        why,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_with_options() {
        let r = Request::from_event(
            Kind::Sql,
            "sql=select+1&sql=select+2&parallel=2&timeout=1.5s&tx=0&reduce=sum",
        )
        .unwrap();
        assert_eq!(r.payloads, vec!["sql=select+1", "sql=select+2"]);
        assert_eq!(r.timeout, Some(Duration::from_millis(1500)));
        assert_eq!(r.options(), "timeout_ms=1500&tx=0");
        assert_eq!(r.lanes(7), vec![Some("7:0".into()), Some("7:1".into())]);
        assert_eq!(r.reduce.as_deref(), Some("sum"));
    }

    #[test]
    fn copy_keeps_columns_and_drops_options() {
        let r = Request::from_event(Kind::Copy, "action=ins&id=1&name=it%27s&lane=l1").unwrap();
        assert_eq!(r.payloads, vec!["action=ins&id=1&name=it%27s"]);
        assert_eq!(r.lanes(1), vec![Some("l1".into())]);
        assert_eq!(r.options(), "");
    }

    #[test]
    fn call_keeps_argument_order() {
        let r = Request::from_event(Kind::Call, "fn=f&arg=b&arg=a").unwrap();
        assert_eq!(r.payloads, vec!["fn=f&arg=b&arg=a"]);
    }

    #[test]
    fn params_round_trip() {
        let r = Request::from_event(Kind::Call, "fn=f&arg=1&arg=2&lane=x").unwrap();
        let back = Request::from_params(Kind::Call, &r.params_json()).unwrap();
        assert_eq!(back.payloads, r.payloads);
        assert_eq!(back.lane, r.lane);
    }

    #[test]
    fn bad_requests_say_why() {
        let err = |kind, data| Request::from_event(kind, data).unwrap_err().to_string();
        assert!(err(Kind::Sql, "lane=x").contains("without sql="));
        assert!(err(Kind::Call, "arg=1").contains("without fn="));
        assert!(err(Kind::Copy, "action=merge&id=1").contains("ins, upd or del"));
        assert!(err(Kind::Copy, "action=ins").contains("without column values"));
        assert!(err(Kind::Sql, "sql=x&timeout=soon").contains("timeout"));
        assert!(err(Kind::Sql, "sql=x&policy=most").contains("policy"));
        assert!(err(Kind::Sql, "sql=x&job=1&job=2").contains("more than once"));
        assert!(err(Kind::Sql, "sql=%ff").contains("invalid UTF-8"));
        assert!(err(Kind::Sql, "sql=x&parallel=0").contains("parallel=\"0\""));
        assert!(err(Kind::Sql, "sql=x&timeout=30d").contains("longer than 24 days"));
        assert!(Request::from_event(Kind::Sql, "sql=x&timeout=24d").is_ok());
        assert!(err(Kind::Copy, "action=ins&id=1&id=2").contains("\"id\" given twice"));
        let huge = format!("sql={}", "x".repeat(MAX_REQUEST_BYTES));
        assert!(err(Kind::Sql, &huge).contains("too large"));
        assert!(Kind::parse("shell").is_err());
    }
}
