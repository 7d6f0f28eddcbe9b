-- pgfan.job_deadline_track(): trigger, after a job with a deadline is inserted: lists it
-- in pgfan.job_deadline, where pgfan.expire_jobs looks for jobs to expire (schema.sql says
-- why that is a table and not an index). A row trigger with a WHEN clause, so that a job
-- without a deadline, most of them, costs no call. SECURITY DEFINER: the roles that make
-- jobs (through pgfan's doors) need no right on the list.
create or replace function pgfan.job_deadline_track()
returns trigger as $$
begin
    insert into pgfan.job_deadline (job_id, deadline)
    values (new.job_id, new.deadline)
    on conflict (job_id) do update set deadline = excluded.deadline;
    return null;
end;
$$ language plpgsql security definer
set search_path = pg_catalog, pg_temp;

revoke all on function pgfan.job_deadline_track() from public;

drop trigger if exists job_deadline_track on pgfan.job;
create trigger job_deadline_track after insert on pgfan.job
    for each row when (new.deadline is not null)
    execute function pgfan.job_deadline_track();
