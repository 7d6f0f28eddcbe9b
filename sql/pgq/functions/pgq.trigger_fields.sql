-- pgq._pgfan_trigger_fields(): the fields of a row's text form (record_out's, `row::text`),
-- as the text their types' output functions gave, for PgQ's change-capture triggers
-- (pgq.triggers.sql).
--
-- A trigger shared by many tables cannot name their columns in static SQL, and a dynamic
-- statement per row is planned per row. The row's text form is generic: '(' fields
-- separated by ',' ')', a field quoted ("...") when it is empty or holds quotes,
-- backslashes, parentheses, commas or white space, with " and \ doubled inside, and NULL
-- an empty unquoted field. Splitting it is one static query whose plan the session keeps.
-- p_n is the number of columns: a table without columns prints '()', one NULL column too.
create or replace function pgq._pgfan_trigger_fields(p_row text, p_n integer)
returns text[] as $$
declare
    v_fields text[];
begin
    if p_n = 0 then
        return '{}';
    end if;
    select array_agg(case when f.m[1] = '' then null
                          when left(f.m[1], 1) = '"' then
                              replace(replace(substr(f.m[1], 2, length(f.m[1]) - 2), '""', '"'), '\\', '\')
                          else f.m[1] end
                     order by f.n)
      into v_fields
      from pg_catalog.regexp_matches(substr(p_row, 2), '("(?:[^"]|"")*"|[^,()"]*)[,)]', 'g')
           with ordinality f(m, n);
    if coalesce(array_length(v_fields, 1), 0) <> p_n then
        raise exception 'pgq trigger: cannot split row % into % fields', p_row, p_n
            using errcode = 'internal_error';
    end if;
    return v_fields;
end;
$$ language plpgsql immutable strict;

do $grant$
begin
    if exists (select 1 from pg_catalog.pg_roles where rolname = 'pgq_writer') then
        grant execute on function pgq._pgfan_trigger_fields(text, integer) to pgq_writer;
    end if;
end
$grant$;
