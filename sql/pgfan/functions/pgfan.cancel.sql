-- pgfan.cancel(job_id): stop a job. Its open tasks are cancelled; node daemons stop the
-- ones they are running (they poll pgfan.cancelled_tasks). True if the job was still open.
create or replace function pgfan.cancel(i_job_id bigint)
returns boolean as $$
begin
    perform 1 from pgfan.job where job_id = i_job_id and state in ('submitted', 'running') for update;
    if not found then
        return false;
    end if;
    perform pgfan.finish_job(i_job_id, 'cancelled', 'cancelled by ' || current_user);
    return true;
end;
$$ language plpgsql
set search_path = pg_catalog, pg_temp;
