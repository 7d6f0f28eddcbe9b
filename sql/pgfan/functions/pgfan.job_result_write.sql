-- pgfan.job_result_write(): INSTEAD OF trigger of the view pgfan.job_result: an insert,
-- update or delete through the view acts on the stored rows, pgfan.job_result_row, as it
-- did when pgfan.job_result was that table. The rows a job reads from its task
-- (result_in_task) are not stored, so there is nothing of theirs to change.
-- Only the owner can write through the view (no role has a right on it); for any other
-- role the write is refused before this trigger runs.
create or replace function pgfan.job_result_write()
returns trigger as $$
begin
    if tg_op in ('UPDATE', 'DELETE') then
        delete from pgfan.job_result_row where job_id = old.job_id and row_no = old.row_no;
        if tg_op = 'DELETE' then
            return old;
        end if;
    end if;
    insert into pgfan.job_result_row (job_id, row_no, row_data)
    values (new.job_id, new.row_no, new.row_data);
    return new;
end;
$$ language plpgsql
set search_path = pg_catalog, pg_temp;

drop trigger if exists job_result_write on pgfan.job_result;
create trigger job_result_write instead of insert or update or delete on pgfan.job_result
    for each row execute function pgfan.job_result_write();
