-- pgfan.reject_event(queue, ev_id, kind, data, target, job_id, error): a push event the
-- relay cannot route.
--
-- The event goes to the dead-letter table with the reason, and its job (the one named by
-- job_id, else a new one for a raw event) fails with the same reason, so a waiting caller
-- learns why. The batch goes on: one bad event never blocks the others. Returns the job id.
-- Only a job not yet routed is failed: an event naming a job that is already running (a
-- replayed or repeated submit event) is dead-lettered without touching the job's work.
-- SECURITY DEFINER: the relay's door (pgfan_relay has no right on pgfan's tables).
create or replace function pgfan.reject_event(
    i_queue text, i_ev_id bigint, i_kind text, i_data text, i_target text,
    i_job_id bigint, i_error text)
returns bigint as $$
declare
    v_job bigint;
begin
    if i_job_id is not null then
        update pgfan.job
           set state = 'failed', error = i_error, finished_at = now()
         where job_id = i_job_id and state = 'submitted'
        returning job_id into v_job;
    else
        insert into pgfan.job (kind, target, state, error, finished_at, source_queue, source_ev_id)
        values (coalesce(i_kind, ''), i_target, 'failed', i_error, now(), i_queue, i_ev_id)
        on conflict (source_queue, source_ev_id) do update
            set state = 'failed', error = excluded.error, finished_at = now()
        returning job_id into v_job;
    end if;
    insert into pgfan.dead_letter (source, job_id, queue_name, ev_id, ev_type, ev_data, ev_target, error)
    values ('relay', v_job, i_queue, i_ev_id, i_kind, i_data, i_target, i_error);
    if v_job is not null then
        perform pg_notify('pgfan_job', v_job::text);
    end if;
    return v_job;
end;
$$ language plpgsql security definer
set search_path = pg_catalog, pg_temp;
