//! One row per measurement; the table, its JSON and its markdown.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

/// Which way is better for a measured quantity.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    Higher,
    Lower,
}

/// A goal from the issue and whether this run met it.
#[derive(Debug, Clone, Serialize)]
pub struct Goal {
    pub text: String,
    pub met: bool,
}

/// One measured quantity of a case, with its baseline from the same run.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Case name as given on the command line.
    pub case: String,
    /// What was measured ("events/s, 2 clients").
    pub metric: String,
    pub unit: String,
    pub better: Better,
    /// Median of pgfan's runs.
    pub pgfan: f64,
    /// Name and median of the baseline; absent for measurements without one (footprint).
    pub baseline: Option<String>,
    pub baseline_value: Option<f64>,
    /// pgfan relative to the baseline, oriented so that > 1 means pgfan is better.
    pub ratio: Option<f64>,
    pub goal: Option<Goal>,
    /// Each run's pgfan values, for the spread.
    pub runs: Vec<f64>,
}

impl Row {
    /// A measurement without a baseline.
    pub fn single(
        case: &str,
        metric: impl Into<String>,
        unit: &str,
        better: Better,
        runs: Vec<f64>,
    ) -> Row {
        Row {
            case: case.into(),
            metric: metric.into(),
            unit: unit.into(),
            better,
            pgfan: median(&runs),
            baseline: None,
            baseline_value: None,
            ratio: None,
            goal: None,
            runs,
        }
    }

    /// A measurement against a baseline; the ratio is oriented by `better`.
    pub fn versus(
        case: &str,
        metric: impl Into<String>,
        unit: &str,
        better: Better,
        runs: Vec<f64>,
        baseline: impl Into<String>,
        baseline_runs: &[f64],
    ) -> Row {
        let mut row = Row::single(case, metric, unit, better, runs);
        let b = median(baseline_runs);
        row.baseline = Some(baseline.into());
        row.baseline_value = Some(b);
        row.ratio = Some(match better {
            Better::Higher => row.pgfan / b,
            Better::Lower => b / row.pgfan,
        });
        row
    }

    /// Attaches a goal.
    pub fn goal(mut self, text: impl Into<String>, met: bool) -> Row {
        self.goal = Some(Goal {
            text: text.into(),
            met,
        });
        self
    }

    /// Attaches the goal "ratio ≥ min".
    pub fn goal_ratio(self, min: f64) -> Row {
        let met = self.ratio.is_some_and(|r| r >= min);
        self.goal(format!("ratio >= {min}"), met)
    }
}

/// Median of a non-empty sample (mean of the middle two for even sizes).
pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Nearest-rank percentile of a sorted sample.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn num(x: f64) -> String {
    if !x.is_finite() {
        "-".into()
    } else if x.abs() >= 1000.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn goal_cell(g: &Option<Goal>) -> String {
    match g {
        Some(g) => format!("{} {}", if g.met { "met" } else { "MISSED" }, g.text),
        None => String::new(),
    }
}

/// The plain-text table printed at the end of a run.
pub fn text_table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<10} {:<52} {:>12} {:<10} {:>12}  {:<34} {:>7}  goal",
        "case", "metric", "pgfan", "unit", "baseline", "baseline is", "ratio"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:<10} {:<52} {:>12} {:<10} {:>12}  {:<34} {:>7}  {}",
            r.case,
            r.metric,
            num(r.pgfan),
            r.unit,
            r.baseline_value.map(num).unwrap_or_default(),
            r.baseline.clone().unwrap_or_default(),
            r.ratio
                .map(|x| format!("{}x", ratio_text(x)))
                .unwrap_or_default(),
            goal_cell(&r.goal)
        );
    }
    out
}

/// The same table as markdown, as the README's Performance section shows it.
pub fn markdown_table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| case | metric | pgfan | baseline | ratio | goal |\n|---|---|---:|---:|---:|---|\n",
    );
    for r in rows {
        let base = match (&r.baseline, r.baseline_value) {
            (Some(name), Some(v)) => format!("{} {} ({name})", num(v), r.unit),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} {} | {} | {} | {} |",
            r.case,
            r.metric,
            num(r.pgfan),
            r.unit,
            base,
            r.ratio
                .map(|x| format!("{}×", ratio_text(x)))
                .unwrap_or_default(),
            goal_cell(&r.goal)
        );
    }
    out
}

/// Header facts of a run: date, machine, PostgreSQL and cluster settings.
#[derive(Debug, Clone, Serialize)]
pub struct Environment {
    pub date: String,
    pub machine: String,
    pub postgres: String,
    pub settings: Vec<(String, String)>,
    pub runs: usize,
    pub quick: bool,
}

impl Environment {
    pub fn describe(&self) -> String {
        let settings: Vec<String> = self
            .settings
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!(
            "{} · {} · PostgreSQL {} · {} run(s) per measurement{} · cluster settings: {}",
            self.date,
            self.machine,
            self.postgres,
            self.runs,
            if self.quick { " (quick sizes)" } else { "" },
            settings.join(" ")
        )
    }
}

/// Writes `results.json` and `results.md` into `dir`.
pub fn write(dir: &Path, env: &Environment, rows: &[Row], notes: &[String]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let json = serde_json::json!({ "environment": env, "rows": rows, "notes": notes });
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    let mut md = format!("{}\n\n{}", env.describe(), markdown_table(rows));
    if !notes.is_empty() {
        md.push('\n');
        for n in notes {
            let _ = writeln!(md, "- {n}");
        }
    }
    std::fs::write(dir.join("results.md"), md)
}

/// Two decimals, or two significant digits below 0.01 (a fraction of a ceiling would
/// otherwise print as 0.00).
fn ratio_text(x: f64) -> String {
    if x != 0.0 && x.abs() < 0.01 {
        format!("{x:.2e}")
    } else {
        format!("{x:.2}")
    }
}
