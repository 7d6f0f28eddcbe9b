//! From a task's payload to the statement that runs it, checked against the node's
//! allow-lists and built from the catalog.
//!
//! Event data never becomes SQL text: raw SQL is run only where `allow_sql` permits it, and
//! for `call` and `copy` every identifier in the statement comes from the catalog
//! (`regproc`/`regclass` output, `quote_ident`, `format_type`) while every value is bound as
//! a text parameter (call arguments) or as one JSON parameter (copy rows).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use serde_json::{Map, Value};
use tokio_postgres::types::Type;
use tokio_postgres::Client;

use super::payload::{Action, Work};
use super::NodeConfig;

/// Why a task cannot run: refused by the node, or a database error while planning.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Db(#[from] tokio_postgres::Error),
}

/// How a task is executed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Raw SQL, run with the simple protocol; `types` are known when it could be described.
    Raw { sql: String, types: Option<Shape> },
    /// A query built from the catalog, its values bound as text parameters.
    Query {
        sql: String,
        params: Vec<String>,
        shape: Shape,
    },
    /// A data change built from the catalog (a copy action); reports the number of rows it
    /// changed. Its parameters are text.
    Modify { sql: String, params: Vec<String> },
}

/// Result columns of a statement: names and type names as `format_type` prints them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    pub columns: Vec<String>,
    pub types: Vec<String>,
}

fn refuse(msg: String) -> PlanError {
    PlanError::Refused(msg)
}

/// Copy tables as the catalog described them, for the tasks of one batch: a batch of
/// copies into one table reads the catalog once. Kept no longer than a batch, so a table
/// changed between batches is read afresh.
#[derive(Default)]
pub struct Tables(HashMap<String, Table>);

/// Plans `work` on the node connection `c` (catalog reads only; nothing is executed);
/// `tx`: it will run inside a transaction of the node's.
pub async fn plan(c: &Client, cfg: &NodeConfig, work: &Work, tx: bool) -> Result<Plan, PlanError> {
    plan_with(c, cfg, work, tx, &mut Tables::default()).await
}

/// [`plan`] with the copy tables already read for this batch.
pub async fn plan_with(
    c: &Client,
    cfg: &NodeConfig,
    work: &Work,
    tx: bool,
    tables: &mut Tables,
) -> Result<Plan, PlanError> {
    match work {
        Work::Sql { sql } => {
            if !cfg.allow_sql {
                return Err(refuse(format!("node {} does not accept raw SQL", cfg.name)));
            }
            super::guard::check(sql, tx).map_err(refuse)?;
            Ok(Plan::Raw {
                sql: sql.clone(),
                types: describe(c, sql).await?,
            })
        }
        Work::Call { func, args } => plan_call(c, cfg, func, args).await,
        Work::Copy {
            action,
            table,
            columns,
        } => plan_copy(c, cfg, *action, table.as_deref(), columns, tables).await,
    }
}

/// Columns of a single statement, or None when it cannot be prepared (several statements,
/// or an error that running it will report properly).
async fn describe(c: &Client, sql: &str) -> Result<Option<Shape>, tokio_postgres::Error> {
    match c.prepare(sql).await {
        Ok(stmt) => Ok(Some(shape_of(c, &stmt).await?)),
        Err(e) if e.as_db_error().is_some() => Ok(None),
        Err(e) => Err(e),
    }
}

async fn shape_of(
    c: &Client,
    stmt: &tokio_postgres::Statement,
) -> Result<Shape, tokio_postgres::Error> {
    let columns: Vec<String> = stmt
        .columns()
        .iter()
        .map(|c| c.name().to_string())
        .collect();
    let pairs: Vec<(u32, i32)> = stmt
        .columns()
        .iter()
        .map(|c| (c.type_().oid(), c.type_modifier()))
        .collect();
    if let Some(types) = builtin_names(&pairs) {
        return Ok(Shape { columns, types });
    }
    let (oids, mods): (Vec<u32>, Vec<i32>) = pairs.iter().copied().unzip();
    let types: Vec<String> = c
        .query_one(
            "select coalesce(array_agg(pg_catalog.format_type(t, nullif(m, -1)) order by n), '{}')
               from unnest($1::oid[], $2::int4[]) with ordinality u(t, m, n)",
            &[&oids, &mods],
        )
        .await?
        .get(0);
    remember_builtin(&pairs, &types);
    Ok(Shape { columns, types })
}

/// Below this OID, types are PostgreSQL's own (FirstNormalObjectId): their names never
/// change, and as pg_catalog's they print the same whatever the search_path.
const FIRST_NORMAL_OID: u32 = 16384;

/// `format_type` names of built-in types seen so far: most tasks return only those, and
/// then their shape costs no query.
fn builtin_cache() -> &'static Mutex<HashMap<(u32, i32), String>> {
    static CACHE: OnceLock<Mutex<HashMap<(u32, i32), String>>> = OnceLock::new();
    CACHE.get_or_init(Mutex::default)
}

fn builtin_names(pairs: &[(u32, i32)]) -> Option<Vec<String>> {
    let cache = builtin_cache().lock().unwrap_or_else(|e| e.into_inner());
    pairs.iter().map(|p| cache.get(p).cloned()).collect()
}

fn remember_builtin(pairs: &[(u32, i32)], names: &[String]) {
    let mut cache = builtin_cache().lock().unwrap_or_else(|e| e.into_inner());
    for (pair, name) in pairs.iter().zip(names) {
        // A type modifier can take any value (varchar(n)): bounded, so a stream of new
        // ones cannot grow the cache without end.
        if pair.0 < FIRST_NORMAL_OID && cache.len() < 1024 {
            cache.insert(*pair, name.clone());
        }
    }
}

async fn plan_call(
    c: &Client,
    cfg: &NodeConfig,
    func: &str,
    args: &[String],
) -> Result<Plan, PlanError> {
    if !cfg.allow_call.iter().any(|f| f == func) {
        return Err(refuse(format!(
            "function {func} is not on node {}'s allow-list",
            cfg.name
        )));
    }
    let row = c
        .query_opt(
            "select p.oid::regproc::text, p.pronargs::int4, p.pronargdefaults::int4, p.prokind::text,
                    array(select pg_catalog.format_type(t, null)
                            from unnest(p.proargtypes::oid[]) with ordinality u(t, n) order by n)
               from pg_catalog.pg_proc p where p.oid = pg_catalog.to_regproc($1)",
            &[&func],
        )
        .await?
        .ok_or_else(|| {
            refuse(format!(
                "function {func} does not exist on node {} (or is overloaded)",
                cfg.name
            ))
        })?;
    let (name, nargs, ndefaults, kind, types): (String, i32, i32, String, Vec<String>) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    if kind != "f" {
        return Err(refuse(format!("{func} is not a plain function")));
    }
    let given = args.len() as i32;
    if given > nargs || given < nargs - ndefaults {
        return Err(refuse(format!(
            "function {func} takes {} arguments, the task gives {given}",
            arg_range(nargs, ndefaults)
        )));
    }
    let casts: Vec<String> = types
        .iter()
        .take(args.len())
        .enumerate()
        .map(|(i, t)| format!("${}::text::{t}", i + 1))
        .collect();
    let sql = format!("select * from {name}({})", casts.join(", "));
    let stmt = c.prepare(&sql).await?;
    Ok(Plan::Query {
        shape: shape_of(c, &stmt).await?,
        sql,
        params: args.to_vec(),
    })
}

fn arg_range(nargs: i32, ndefaults: i32) -> String {
    if ndefaults == 0 {
        nargs.to_string()
    } else {
        format!("{} to {nargs}", nargs - ndefaults)
    }
}

/// A copy target as the catalog describes it.
struct Table {
    /// `regclass` output: quoted and schema-qualified as needed.
    name: String,
    /// (name, quoted name) of every live column.
    columns: Vec<(String, String)>,
    /// Quoted names of the key columns.
    key: Vec<String>,
}

async fn plan_copy(
    c: &Client,
    cfg: &NodeConfig,
    action: Action,
    table: Option<&str>,
    values: &[(String, String)],
    tables: &mut Tables,
) -> Result<Plan, PlanError> {
    let table = copy_table(cfg, table)?;
    if !tables.0.contains_key(table) {
        let t = load_table(c, cfg, table).await?;
        tables.0.insert(table.to_string(), t);
    }
    let Some(t) = tables.0.get(table) else {
        return Err(refuse(format!("table {table} was not read")));
    };
    let mut row = Map::new();
    let mut given = Vec::new();
    for (col, val) in values {
        let quoted = t
            .columns
            .iter()
            .find(|(name, _)| name == col)
            .map(|(_, q)| q.clone())
            .ok_or_else(|| refuse(format!("column {col:?} does not exist in table {table}")))?;
        row.insert(col.clone(), Value::String(val.clone()));
        given.push(quoted);
    }
    let params = vec![Value::Object(row).to_string()];
    let sql = copy_sql(t, action, &given, table)?;
    Ok(Plan::Modify { sql, params })
}

fn copy_table<'a>(cfg: &'a NodeConfig, table: Option<&'a str>) -> Result<&'a str, PlanError> {
    match table {
        Some(t) if cfg.copy_tables.iter().any(|a| a == t) => Ok(t),
        Some(t) => Err(refuse(format!(
            "table {t} is not in node {}'s copy_tables",
            cfg.name
        ))),
        None => cfg.copy_tables.first().map(String::as_str).ok_or_else(|| {
            refuse(format!(
                "node {} accepts no copy tasks (copy_tables is empty)",
                cfg.name
            ))
        }),
    }
}

/// The table's name, columns and key, from the catalog in one query (a copy task is often
/// a single row, so this round trip is a good part of its cost).
async fn load_table(c: &Client, cfg: &NodeConfig, table: &str) -> Result<Table, PlanError> {
    let row = c
        .query_typed_opt(
            "select c.oid::regclass::text,
                    array(select a.attname::text from pg_catalog.pg_attribute a
                           where a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
                           order by a.attnum),
                    array(select pg_catalog.quote_ident(a.attname) from pg_catalog.pg_attribute a
                           where a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
                           order by a.attnum),
                    array(select a.attname::text
                            from pg_catalog.pg_index i
                            cross join unnest(i.indkey::int2[]) with ordinality k(attnum, n)
                            join pg_catalog.pg_attribute a
                              on a.attrelid = i.indrelid and a.attnum = k.attnum
                           where i.indrelid = c.oid and i.indisprimary
                           order by k.n)
               from pg_catalog.pg_class c
              where c.oid = pg_catalog.to_regclass($1) and c.relkind in ('r', 'p')",
            &[(&table, Type::TEXT)],
        )
        .await?
        .ok_or_else(|| refuse(format!("table {table} does not exist on node {}", cfg.name)))?;
    let names: Vec<String> = row.get(1);
    let quoted: Vec<String> = row.get(2);
    let columns: Vec<(String, String)> = names.into_iter().zip(quoted).collect();
    let key = match &cfg.copy_key {
        Some(k) => vec![k.clone()],
        None => row.get(3),
    };
    let key = key
        .iter()
        .map(|k| {
            columns
                .iter()
                .find(|(name, _)| name == k)
                .map(|(_, q)| q.clone())
                .ok_or_else(|| refuse(format!("key column {k:?} does not exist in table {table}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Table {
        name: row.get(0),
        columns,
        key,
    })
}

/// The statement of a copy action; `given` are the quoted columns the row has.
fn copy_sql(t: &Table, action: Action, given: &[String], table: &str) -> Result<String, PlanError> {
    let src = format!(
        "pg_catalog.json_populate_record(null::{}, $1::text::json) as pgfan_r",
        t.name
    );
    if action != Action::Insert {
        if t.key.is_empty() {
            return Err(refuse(format!(
                "table {table} has no primary key; set copy_key to update or delete"
            )));
        }
        if let Some(k) = t.key.iter().find(|k| !given.contains(k)) {
            return Err(refuse(format!(
                "copy {action:?} without the key column {k}"
            )));
        }
    }
    let matches = t
        .key
        .iter()
        .map(|k| format!("pgfan_t.{k} = pgfan_r.{k}"))
        .collect::<Vec<_>>()
        .join(" and ");
    Ok(match action {
        Action::Insert => {
            let cols = given.join(", ");
            let vals = given
                .iter()
                .map(|c| format!("pgfan_r.{c}"))
                .collect::<Vec<_>>()
                .join(", ");
            format!("insert into {} ({cols}) select {vals} from {src}", t.name)
        }
        Action::Update => {
            let sets: Vec<String> = given
                .iter()
                .filter(|c| !t.key.contains(c))
                .map(|c| format!("{c} = pgfan_r.{c}"))
                .collect();
            if sets.is_empty() {
                return Err(refuse("copy update without any non-key column".into()));
            }
            format!(
                "update {} as pgfan_t set {} from {src} where {matches}",
                t.name,
                sets.join(", ")
            )
        }
        Action::Delete => {
            format!(
                "delete from {} as pgfan_t using {src} where {matches}",
                t.name
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Table {
        Table {
            name: "public.\"T\"".into(),
            columns: vec![
                ("id".into(), "id".into()),
                ("Name".into(), "\"Name\"".into()),
            ],
            key: vec!["id".into()],
        }
    }

    #[test]
    fn copy_statements_use_catalog_names_and_one_parameter() {
        let t = table();
        let given = vec!["id".to_string(), "\"Name\"".to_string()];
        let ins = copy_sql(&t, Action::Insert, &given, "T").unwrap();
        assert_eq!(
            ins,
            "insert into public.\"T\" (id, \"Name\") select pgfan_r.id, pgfan_r.\"Name\" from \
             pg_catalog.json_populate_record(null::public.\"T\", $1::text::json) as pgfan_r"
        );
        let upd = copy_sql(&t, Action::Update, &given, "T").unwrap();
        assert!(upd.contains("set \"Name\" = pgfan_r.\"Name\""), "{upd}");
        assert!(upd.ends_with("where pgfan_t.id = pgfan_r.id"), "{upd}");
        let err = copy_sql(&t, Action::Delete, &given[1..], "T").unwrap_err();
        assert!(err.to_string().contains("key column id"), "{err}");
    }
}
