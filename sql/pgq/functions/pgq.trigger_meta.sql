-- pgq._pgfan_trigger_meta(): what PgQ's change-capture triggers (pgq.triggers.sql) need to
-- know about a table for their common case, read from the catalog once per statement and
-- kept in the session, so that pgq._pgfan_trigger_row queues most rows without a query of
-- its own.
--
-- Kept in a custom setting (pgq_trg.r<table oid>) as text, the items joined by the byte 0x01
-- (splitting that costs a fraction of reading an array literal; names holding it are not
-- the common case, and nothing after [2] is used then); returned as an array:
--   [1] the statement it is valid for (statement_timestamp() and the transaction id):
--       SQL sees no relation-cache invalidation, and a table cannot change under a running
--       statement, so a new statement reads the catalog again
--   [2] 't' when the common case applies: columns exist, none is a _pgq_ev_* column, no
--       column name has a comma, white space or 0x01 (key columns are then plainly the
--       key's)
--   [3] the primary key's columns as a comma list ('' without one)
--   [4] per column how its output text is read from the row as jsonb (to_jsonb, no
--       statement): j as is (the type's output), b bool, f/g float4/float8 (read back,
--       -0 excepted), d/t/z date/timestamp/timestamptz (read back from JSON's ISO form), r
--       from the row's text form (arrays, composites, json, domains, anything else)
--   [5] the column names, an array literal
--   [6] logutriga's ev_data as a format() string: name%1$s&name%2$s..., names urlencoded
--   [7] sqltriga's INSERT prefix: (col,...) values (
--   [8] the key columns' positions, an array literal
--   [9] 't' when every key column's type prints exactly (equal values, equal text), so
--       that an UPDATE changed the key when it changed the key's text
-- Setting values are session state any user can set, so nothing here is ever run as SQL.
create or replace function pgq._pgfan_trigger_meta(p_relid oid, p_stamp text)
returns text[] as $$
declare
    v_names text[];
    v_types oid[];
    v_typtypes text[];
    v_replident "char";
    v_pkey text[];
    v_kinds text := '';
    v_meta text[];
begin
    select coalesce(array_agg(a.attname::text order by a.attnum), '{}'),
           coalesce(array_agg(a.atttypid order by a.attnum), '{}'),
           coalesce(array_agg(y.typtype::text order by a.attnum), '{}'),
           (select c.relreplident from pg_catalog.pg_class c where c.oid = p_relid)
      into v_names, v_types, v_typtypes, v_replident
      from pg_catalog.pg_attribute a
      join pg_catalog.pg_type y on y.oid = a.atttypid
     where a.attrelid = p_relid and a.attnum > 0 and not a.attisdropped;
    select coalesce(array_agg(p.attname::text order by ks.n), '{}')
      into v_pkey
      from pg_catalog.pg_index x
     cross join lateral unnest(x.indkey::int2[]) with ordinality ks(attnum, n)
      join pg_catalog.pg_attribute p on p.attrelid = x.indrelid and p.attnum = ks.attnum
     where x.indrelid = p_relid and x.indisprimary;
    for c in 1 .. coalesce(array_length(v_names, 1), 0) loop
        v_kinds := v_kinds || case
            when v_types[c] in (17, 18, 19, 20, 21, 23, 25, 26, 650, 829, 869, 1042, 1043, 1083, 1186, 1266, 1700, 2950)
                 or v_typtypes[c] = 'e' then 'j'
            when v_types[c] = 16 then 'b'
            when v_types[c] = 700 then 'f'
            when v_types[c] = 701 then 'g'
            when v_types[c] = 1082 then 'd'
            when v_types[c] = 1114 then 't'
            when v_types[c] = 1184 then 'z'
            else 'r' end;
    end loop;
    v_meta := array[
        p_stamp,
        case when array_length(v_names, 1) > 0
                  and not exists (select 1 from unnest(v_names) n
                              where n like '\_pgq\_ev\_%' or n ~ '[,[:space:]]' or strpos(n, chr(1)) > 0)
             then 't' else 'f' end,
        array_to_string(v_pkey, ','),
        v_kinds,
        v_names::text,
        (select coalesce(string_agg(replace(pgq._pgfan_urlencode(n), '%', '%%') || '%' || i || '$s', '&' order by i), '')
           from unnest(v_names) with ordinality u(n, i)),
        '(' || (select coalesce(string_agg(quote_ident(n), ',' order by i), '')
                  from unnest(v_names) with ordinality u(n, i)) || ') values (',
        (select coalesce(array_agg(i order by i), '{}')
           from unnest(v_names) with ordinality u(n, i) where n = any(v_pkey))::text,
        (select case when coalesce(bool_and(t in (16, 17, 18, 19, 20, 21, 23, 25, 26, 1043, 1082, 1083, 1114, 1184, 2950)), false)
                     then 't' else 'f' end
           from unnest(v_names, v_types) u(n, t) where n = any(v_pkey))];
    perform set_config('pgq_trg.r' || p_relid, array_to_string(v_meta, chr(1)), false);
    return v_meta;
end;
$$ language plpgsql;

do $grant$
begin
    if exists (select 1 from pg_catalog.pg_roles where rolname = 'pgq_writer') then
        grant execute on function pgq._pgfan_trigger_meta(oid, text) to pgq_writer;
    end if;
end
$grant$;
