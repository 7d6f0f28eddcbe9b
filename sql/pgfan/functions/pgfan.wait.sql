-- pgfan.wait(job_id [, timeout]): block until the job is done, failed or cancelled, or
-- the timeout passes; returns the job's state then.
--
-- A SQL function cannot LISTEN, so it re-reads the job row with short naps (10 ms,
-- doubling to 100 ms); in READ COMMITTED each read sees the reducer's latest commit.
-- Clients that can LISTEN should wait for NOTIFY pgfan_job, '<job_id>' instead. Waiting in
-- the transaction that submitted the job would never end (the job starts at commit), so
-- that is an error.
create or replace function pgfan.wait(i_job_id bigint, i_timeout interval default '1 min')
returns text as $$
declare
    v_state text;
    v_xmin bigint;
    v_until timestamptz := clock_timestamp() + i_timeout;
    v_nap float8 := 0.01;
begin
    select state, xmin::text::bigint into v_state, v_xmin from pgfan.job where job_id = i_job_id;
    if not found then
        raise exception 'pgfan.wait: unknown job %', i_job_id;
    elsif v_xmin = (txid_current_if_assigned() & 4294967295) and v_state = 'submitted' then
        raise exception 'pgfan.wait: job % was submitted in this transaction; commit first', i_job_id;
    end if;
    loop
        select state into v_state from pgfan.job where job_id = i_job_id;
        exit when v_state in ('done', 'failed', 'cancelled') or clock_timestamp() >= v_until;
        perform pg_sleep(least(v_nap, greatest(extract(epoch from v_until - clock_timestamp()), 0)));
        v_nap := least(v_nap * 2, 0.1);
    end loop;
    return v_state;
end;
$$ language plpgsql security definer
set search_path = pg_catalog, pg_temp;
