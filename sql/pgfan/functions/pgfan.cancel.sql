-- pgfan.cancel(job_id): stop a job. Its open tasks are cancelled; node daemons stop the
-- ones they are running (they poll pgfan.cancelled_tasks). True if the job was still open.
-- SECURITY DEFINER for pgfan_producer: a producer may cancel the jobs it submitted; the
-- owner (pgfan.caller_is_owner) any job.
create or replace function pgfan.cancel(i_job_id bigint)
returns boolean as $$
declare
    v_by text;
begin
    select submitted_by into v_by from pgfan.job
     where job_id = i_job_id and state in ('submitted', 'running') for update;
    if not found then
        return false;
    elsif v_by is distinct from session_user::text and not pgfan.caller_is_owner() then
        raise exception 'pgfan.cancel: job % was submitted by another role', i_job_id
            using errcode = 'insufficient_privilege';
    end if;
    perform pgfan.finish_job(i_job_id, 'cancelled', 'cancelled by ' || session_user);
    return true;
end;
$$ language plpgsql security definer
set search_path = pg_catalog, pg_temp;
