-- pgfan.run_on_all(sql [, reduce]) and pgfan.run_parallel(sqls, parallel [, target]):
-- shorthands for pgfan.submit.
--
-- run_on_all runs one statement on every active node. run_parallel runs many statements
-- on one node (by default any live one), at most `parallel` at a time, as one job.
-- PL/pgSQL so that they install before pgfan.submit (files install in name order).
create or replace function pgfan.run_on_all(i_sql text, i_reduce text default null)
returns bigint as $$
begin
    return pgfan.submit('all', i_sql, reduce => i_reduce);
end;
$$ language plpgsql
set search_path = pg_catalog, pg_temp;

create or replace function pgfan.run_parallel(i_sqls text[], i_parallel integer,
                                              i_target text default 'any')
returns bigint as $$
begin
    return pgfan.submit(i_target, sqls => i_sqls, parallel => i_parallel);
end;
$$ language plpgsql
set search_path = pg_catalog, pg_temp;
