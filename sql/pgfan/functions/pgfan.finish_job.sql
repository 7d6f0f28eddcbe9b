-- pgfan.finish_job(job_id, state, error): a job reaches its final state.
--
-- Tasks still open are cancelled (a node that has them stops them through
-- pgfan.cancelled_tasks), and waiters are woken with NOTIFY pgfan_job, '<job_id>'. Its
-- result is what reduce_job stored (result_in_task is complete_jobs' shortcut only).
-- The open states are named as "not finished" on purpose: spelled as the predicate of a
-- partial index of open tasks, the planner took that index and walked every open task of
-- every job (0.8 ms a call with a backlog of 10k tasks) instead of the job's few rows.
create or replace function pgfan.finish_job(i_job_id bigint, i_state text, i_error text)
returns text as $$
begin
    update pgfan.job set state = i_state, error = i_error, finished_at = now(),
                         result_in_task = false
     where job_id = i_job_id;
    update pgfan.task set state = 'cancelled', finished_at = now()
     where job_id = i_job_id and state not in ('done', 'failed', 'cancelled');
    perform pg_notify('pgfan_job', i_job_id::text);
    return i_state;
end;
$$ language plpgsql
set search_path = pg_catalog, pg_temp;
