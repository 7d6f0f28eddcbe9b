-- Case 6's baseline: what a user without pgfan writes to run many statements on another
-- database a few at a time, with contrib's dblink (asynchronous queries on a fixed pool of
-- named connections). Installed on the master; needs `create extension dblink`.
--
--   select pgfan_bench.dblink_open('host=... dbname=...', 4);   -- the pool, once per session
--   select pgfan_bench.dblink_run(array['select 1', ...], 4);    -- rows returned
--   select pgfan_bench.dblink_close(4);
--
-- Every statement must return one column (any type, read as text); its rows are counted,
-- so every result really travels back to the master, as pgfan's results do.
create schema if not exists pgfan_bench;

-- Opens connections bench_pool_1 .. bench_pool_<n> of this session (the ones not open yet).
create or replace function pgfan_bench.dblink_open(i_conninfo text, i_pool integer)
returns void as $$
begin
    for k in 1 .. i_pool loop
        if not coalesce('bench_pool_' || k = any(dblink_get_connections()), false) then
            perform dblink_connect('bench_pool_' || k, i_conninfo);
        end if;
    end loop;
end;
$$ language plpgsql;

create or replace function pgfan_bench.dblink_close(i_pool integer)
returns void as $$
begin
    for k in 1 .. i_pool loop
        if coalesce('bench_pool_' || k = any(dblink_get_connections()), false) then
            perform dblink_disconnect('bench_pool_' || k);
        end if;
    end loop;
end;
$$ language plpgsql;

-- Runs i_sqls on the open pool, at most one statement per connection at a time: every idle
-- connection gets the next statement; then the first connection found finished
-- (dblink_is_busy) is collected, or, when all are busy, the one busy longest, blocking in
-- dblink_get_result rather than spinning (the statements of one call are alike, so the
-- oldest is the likeliest to end first). Fails on the first failing statement. Returns
-- the number of result rows.
create or replace function pgfan_bench.dblink_run(i_sqls text[], i_pool integer)
returns bigint as $$
declare
    v_n integer := coalesce(cardinality(i_sqls), 0);
    v_sent integer := 0;
    v_got integer := 0;
    v_busy boolean[] := array_fill(false, array[i_pool]);
    v_inflight integer[] := '{}';   -- busy connections, oldest dispatch first
    v_rows bigint := 0;
    v_pick integer;
    v_conn text;
    v_k integer;
begin
    while v_got < v_n loop
        for k in 1 .. i_pool loop
            exit when v_sent >= v_n;
            if not v_busy[k] then
                v_sent := v_sent + 1;
                perform dblink_send_query('bench_pool_' || k, i_sqls[v_sent]);
                v_busy[k] := true;
                v_inflight := v_inflight || k;
            end if;
        end loop;
        v_pick := null;
        foreach v_k in array v_inflight loop
            if dblink_is_busy('bench_pool_' || v_k) = 0 then
                v_pick := v_k;
                exit;
            end if;
        end loop;
        v_pick := coalesce(v_pick, v_inflight[1]);
        v_conn := 'bench_pool_' || v_pick;
        v_rows := v_rows + (select count(*) from dblink_get_result(v_conn) as r(v text));
        -- dblink needs one more call, returning the empty end result, before the
        -- connection takes the next query.
        perform 1 from dblink_get_result(v_conn) as r(v text);
        v_busy[v_pick] := false;
        v_inflight := array_remove(v_inflight, v_pick);
        v_got := v_got + 1;
    end loop;
    return v_rows;
end;
$$ language plpgsql;
