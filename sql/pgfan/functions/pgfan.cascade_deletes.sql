-- pgfan.cascade_deletes(): trigger, after a statement deletes jobs or tasks: deletes what
-- hangs off them, as the foreign keys' "on delete cascade" did (schema.sql says why the
-- keys went). A deleted job takes its result rows and its tasks, a deleted task (this
-- trigger again, on pgfan.task) its rows.
--
-- Once per statement, over its transition table: nothing is done per routed task, and a
-- large delete costs one join per table rather than a query per row. SECURITY DEFINER,
-- as the keys' cascades ran with the owner's rights: a role allowed to delete jobs need
-- not be allowed to delete tasks.
create or replace function pgfan.cascade_deletes()
returns trigger as $$
begin
    if tg_table_name = 'job' then
        delete from pgfan.job_result_row r using gone g where r.job_id = g.job_id;
        delete from pgfan.task t using gone g where t.job_id = g.job_id;
    elsif tg_table_name = 'task' then
        delete from pgfan.task_row r using gone g where r.task_id = g.task_id;
    end if;
    return null;
end;
$$ language plpgsql security definer
set search_path = pg_catalog, pg_temp;

revoke all on function pgfan.cascade_deletes() from public;

drop trigger if exists job_cascade_deletes on pgfan.job;
create trigger job_cascade_deletes after delete on pgfan.job
    referencing old table as gone
    for each statement execute function pgfan.cascade_deletes();
drop trigger if exists task_cascade_deletes on pgfan.task;
create trigger task_cascade_deletes after delete on pgfan.task
    referencing old table as gone
    for each statement execute function pgfan.cascade_deletes();
