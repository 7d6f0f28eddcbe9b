//! The bundled core's catalog footprint equals the real PgQ 3.5 extension's.
//!
//! Clients see functions (names, argument names and types, OUT columns, security), tables
//! (columns, types, defaults, constraints) and privileges. The same catalog queries run on a
//! database with each backend; the results must be equal row for row, except for the
//! documented hardening (a pinned search_path on SECURITY DEFINER functions) and pgfan's
//! private helpers (`pgq._pgfan_*`, owner-only: the generated insert path).

mod common;

use common::{Backend, TestDb};

const FUNCTIONS: &str = "
    select p.proname || '(' || pg_get_function_arguments(p.oid) || ') -> '
           || pg_get_function_result(p.oid)
           || case when p.prosecdef then ' security definer' else '' end
           || case when p.proretset then ' setof' else '' end
           || ' volatility=' || p.provolatile::text || case when p.proisstrict then ' strict' else '' end
           || ' acl=' || coalesce(array_to_string(array(select unnest(p.proacl)::text order by 1), ' '), '-')
      from pg_proc p join pg_namespace n on n.oid = p.pronamespace
     where n.nspname = 'pgq' and p.proname not like '\\_pgfan\\_%'
     order by 1";

const COLUMNS: &str = "
    select c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
           || case when a.attnotnull then ' not null' else '' end
           || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
      from pg_class c join pg_namespace n on n.oid = c.relnamespace
      join pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
      left join pg_attrdef d on d.adrelid = c.oid and d.adnum = a.attnum
     where n.nspname = 'pgq' and c.relkind = 'r'
     order by c.relname, a.attnum";

const CONSTRAINTS: &str = "
    select c.relname || ': ' || k.conname || ' ' || pg_get_constraintdef(k.oid)
      from pg_constraint k join pg_class c on c.oid = k.conrelid
      join pg_namespace n on n.oid = c.relnamespace
     where n.nspname = 'pgq'
     order by 1";

const RELATIONS: &str = "
    select c.relname || ' ' || c.relkind::text
           || ' acl=' || coalesce(array_to_string(array(select unnest(c.relacl)::text order by 1), ' '), '-')
           || ' options=' || coalesce(array_to_string(c.reloptions, ','), '-')
           || ' inherits=' || coalesce((select string_agg(i.inhparent::regclass::text, ',')
                                          from pg_inherits i where i.inhrelid = c.oid), '-')
      from pg_class c join pg_namespace n on n.oid = c.relnamespace
     where n.nspname = 'pgq'
     order by 1";

async fn catalog(backend: Backend, query: &str) -> Vec<String> {
    let db = TestDb::new(backend).await;
    let client = db.connect().await;
    // A queue with a consumer creates the per-queue objects whose shape clients also rely on.
    client
        .batch_execute(
            "select pgq.create_queue('compat'); select pgq.register_consumer('compat', 'c')",
        )
        .await
        .unwrap();
    client
        .query(query, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn assert_same(query: &str) {
    let bundled = catalog(Backend::Bundled, query).await;
    let extension = catalog(Backend::Extension, query).await;
    let missing: Vec<_> = extension.iter().filter(|r| !bundled.contains(r)).collect();
    let extra: Vec<_> = bundled.iter().filter(|r| !extension.contains(r)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "bundled core differs from the extension\nonly in the extension:\n  {}\nonly in the bundled core:\n  {}",
        missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n  "),
        extra.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n  "),
    );
}

#[tokio::test]
async fn functions_match_the_extension() {
    assert_same(FUNCTIONS).await;
}

#[tokio::test]
async fn table_columns_match_the_extension() {
    assert_same(COLUMNS).await;
}

#[tokio::test]
async fn constraints_match_the_extension() {
    assert_same(CONSTRAINTS).await;
}

#[tokio::test]
async fn relations_and_privileges_match_the_extension() {
    assert_same(RELATIONS).await;
}

#[tokio::test]
async fn security_definer_functions_pin_search_path() {
    let db = TestDb::new(Backend::Bundled).await;
    let client = db.connect().await;
    let unpinned: Vec<String> = client
        .query(
            "select p.oid::regprocedure::text from pg_proc p join pg_namespace n on n.oid = p.pronamespace
              where n.nspname = 'pgq' and p.prosecdef
                and p.oid <> 'pgq.insert_event(text,text,text,text,text,text,text)'::regprocedure
                and not exists (select 1 from unnest(p.proconfig) c where c like 'search_path=%')",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        unpinned.is_empty(),
        "SECURITY DEFINER without a pinned search_path: {unpinned:?}"
    );
}

/// insert_event is the one SECURITY DEFINER function without a pinned search_path (it is the
/// producers' hot path); it names everything schema-qualified instead. A writer who puts its
/// own schema first, with look-alike operators and functions that would run as the owner,
/// must not get them called.
#[tokio::test]
async fn insert_event_ignores_a_hostile_search_path() {
    let db = TestDb::new(Backend::Bundled).await;
    let client = db.connect().await;
    client
        .batch_execute(
            "select pgq.create_queue('q');
             do $$ begin
                 if not exists (select 1 from pg_roles where rolname = 'hostile_writer') then
                     create role hostile_writer login;
                 end if;
             end $$;
             grant pgq_writer to hostile_writer;
             create schema evil authorization hostile_writer;",
        )
        .await
        .unwrap();
    let w = db.connect_as("hostile_writer").await;
    w.batch_execute(
        "create function evil.hijack_int(integer, integer) returns boolean
             language plpgsql as $$ begin raise exception 'hijacked: int ='; end $$;
         create operator evil.= (leftarg = integer, rightarg = integer, function = evil.hijack_int);
         create operator evil.< (leftarg = integer, rightarg = integer, function = evil.hijack_int);
         create function evil.hijack_text(text, text) returns boolean
             language plpgsql as $$ begin raise exception 'hijacked: text ='; end $$;
         create operator evil.= (leftarg = text, rightarg = text, function = evil.hijack_text);
         create function evil.now() returns timestamptz
             language plpgsql as $$ begin raise exception 'hijacked: now()'; end $$;
         create function evil.nextval(regclass) returns bigint
             language plpgsql as $$ begin raise exception 'hijacked: nextval()'; end $$;
         set search_path = evil, pg_catalog, public;",
    )
    .await
    .unwrap();
    for call in [
        "select pgq.insert_event('q', 't', 'd')",
        "select pgq.insert_event('q', 't', 'd', 'e1', null, null, null)",
    ] {
        let id: i64 = w
            .query_one(call, &[])
            .await
            .unwrap_or_else(|e| panic!("{call}: {}", common::db_message(&e)))
            .get(0);
        assert!(id > 0, "{call}");
    }
    let n: i64 = client
        .query_one("select count(*) from pgq.event_template", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
}
