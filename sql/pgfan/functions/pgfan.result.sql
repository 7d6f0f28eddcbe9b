-- pgfan.result(job_id): the reduced rows of a done job, one jsonb object per row.
--
-- A job that failed or was cancelled raises with its error, and one still running raises
-- too, so a caller never mistakes "no rows yet" for an empty result. SECURITY DEFINER for
-- pgfan_producer: a producer reads the results of the jobs it submitted; the owner
-- (pgfan.caller_is_owner) those of any job.
create or replace function pgfan.result(i_job_id bigint)
returns setof jsonb as $$
declare
    v_state text;
    v_error text;
    v_by text;
begin
    select state, error, submitted_by into v_state, v_error, v_by from pgfan.job where job_id = i_job_id;
    if not found then
        raise exception 'pgfan.result: unknown job %', i_job_id;
    elsif v_by is distinct from session_user::text and not pgfan.caller_is_owner() then
        raise exception 'pgfan.result: job % was submitted by another role', i_job_id
            using errcode = 'insufficient_privilege';
    elsif v_state <> 'done' then
        raise exception 'pgfan.result: job % is %', i_job_id, v_state
            using detail = coalesce(v_error, pgfan.job_summary(i_job_id));
    end if;
    return query select row_data from pgfan.job_result where job_id = i_job_id order by row_no;
end;
$$ language plpgsql stable security definer
set search_path = pg_catalog, pg_temp;
