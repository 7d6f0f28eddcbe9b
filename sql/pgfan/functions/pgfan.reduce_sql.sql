-- pgfan.reduce_sql(reduce, columns): the query that reduces a job's `partials`.
--
-- Shorthands work on every column of the partial results:
--   concat (or none)  every partial row
--   sum / min / max   that aggregate of each column
--   count             the number of partial rows
--   avg               a correct mean from per-node (sum, count) pairs: sum(sum) / sum(count),
--                     not an average of averages; the partials must have exactly two columns
-- Anything else is taken as the caller's own SQL over `partials`. Column names are
-- quoted with quote_ident, never spliced raw.
create or replace function pgfan.reduce_sql(i_reduce text, i_columns text[])
returns text as $$
declare
    v_fn text := lower(btrim(coalesce(i_reduce, 'concat')));
begin
    if v_fn in ('concat', '') then
        return 'select * from partials';
    elsif v_fn = 'count' then
        return 'select count(*) as count from partials';
    elsif v_fn in ('sum', 'min', 'max') then
        return 'select ' || (select string_agg(format('%s(%I) as %I', v_fn, c, c), ', ' order by o)
                               from unnest(i_columns) with ordinality u(c, o))
               || ' from partials';
    elsif v_fn = 'avg' then
        if coalesce(cardinality(i_columns), 0) <> 2 then
            raise exception 'pgfan: reduce avg needs partials with two columns (sum, count), got %',
                coalesce(array_to_string(i_columns, ', '), 'none');
        end if;
        return format('select sum(%I)::numeric / nullif(sum(%I), 0) as avg from partials',
                      i_columns[1], i_columns[2]);
    end if;
    return i_reduce;
end;
$$ language plpgsql immutable
set search_path = pg_catalog, pg_temp;
