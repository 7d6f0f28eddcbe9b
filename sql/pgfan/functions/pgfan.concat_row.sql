-- pgfan.concat_kinds(types) and pgfan.concat_row(columns, kinds, vals): a partial result
-- row as jsonb without dynamic SQL, for the plain concatenation reduce.
--
-- concat_kinds gives each result type's kind: 'n' for smallint, integer, bigint and
-- numeric, 't' for text and varchar, 'b' for boolean, NULL for any other type (those go
-- through reduce_job's dynamic casts). concat_row casts each value by its kind and builds
-- the object: the same casts as the dynamic path, so the same jsonb (numbers as numbers; a
-- repeated column name keeps its last value, as to_jsonb of a row does). Used by
-- reduce_job and complete_jobs. SQL without a SET clause, so the planner can inline them.
create or replace function pgfan.concat_kinds(i_types text[])
returns text[] as $$
    select array_agg(case
                         -- The names format_type gives, which is what nodes report, are
                         -- told apart as text: to_regtype runs the parser on its argument
                         -- (about 25 us a call, most of a reducer's time on the delivery
                         -- benchmark). Anything else (an alias, a typmod) takes that path.
                         when t in ('smallint', 'integer', 'bigint', 'numeric') then 'n'
                         when t in ('text', 'character varying') then 't'
                         when t = 'boolean' then 'b'
                         when t in ('date', 'timestamp with time zone', 'timestamp without time zone',
                                    'real', 'double precision', 'json', 'jsonb', 'uuid',
                                    'character', 'bytea', 'interval', 'time without time zone',
                                    'oid', 'name') then null
                         when pg_catalog.to_regtype(t) in ('smallint'::regtype, 'integer'::regtype,
                                                           'bigint'::regtype, 'numeric'::regtype) then 'n'
                         when pg_catalog.to_regtype(t) in ('text'::regtype,
                                                           'character varying'::regtype) then 't'
                         when pg_catalog.to_regtype(t) = 'boolean'::regtype then 'b'
                     end order by o)
      from unnest(i_types) with ordinality u(t, o);
$$ language sql stable;

create or replace function pgfan.concat_row(i_columns text[], i_kinds text[], i_vals text[])
returns jsonb as $$
    select jsonb_object_agg(c.name, case c.kind
                                        when 'n' then to_jsonb(i_vals[c.o]::numeric)
                                        when 'b' then to_jsonb(i_vals[c.o]::boolean)
                                        else to_jsonb(i_vals[c.o])
                                    end order by c.o)
      from unnest(i_columns, i_kinds) with ordinality c(name, kind, o);
$$ language sql immutable;
