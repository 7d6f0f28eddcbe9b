-- pgfan.finish_job(job_id, state, error): a job reaches its final state.
--
-- Tasks still open are cancelled (a node that has them stops them through
-- pgfan.cancelled_tasks), and waiters are woken with NOTIFY pgfan_job, '<job_id>'.
create or replace function pgfan.finish_job(i_job_id bigint, i_state text, i_error text)
returns text as $$
begin
    update pgfan.job set state = i_state, error = i_error, finished_at = now()
     where job_id = i_job_id;
    update pgfan.task set state = 'cancelled', finished_at = now()
     where job_id = i_job_id and state in ('queued', 'claimed', 'running');
    perform pg_notify('pgfan_job', i_job_id::text);
    return i_state;
end;
$$ language plpgsql
set search_path = pg_catalog, pg_temp;
