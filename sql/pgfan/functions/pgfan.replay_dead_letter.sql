-- pgfan.replay_dead_letter(dl_id): try a dead letter again, once the cause is fixed.
--
--   relay    the event goes into push_queue again (a producer database's event is
--            replayed on the master) and becomes a new job
--   node     the failed tasks of its job run again (pgfan.retry_failed)
--   reducer  a failed reduce or an expired deadline cannot be replayed: resubmit the job
-- A dead letter is replayed at most once (replayed_at). Returns what was done.
create or replace function pgfan.replay_dead_letter(i_dl_id bigint)
returns text as $$
declare
    v_dl record;
    v_done text;
begin
    select * into v_dl from pgfan.dead_letter where dl_id = i_dl_id for update;
    if not found then
        raise exception 'pgfan: no dead letter %', i_dl_id;
    elsif v_dl.replayed_at is not null then
        raise exception 'pgfan: dead letter % was replayed at %', i_dl_id, v_dl.replayed_at;
    end if;
    if v_dl.source = 'relay' then
        v_done := format('requeued as event %s of push_queue',
            pgfan.enqueue('push_queue', coalesce(v_dl.ev_type, ''), v_dl.ev_data,
                             v_dl.ev_target, null, null, null));
    elsif v_dl.source = 'node' and v_dl.job_id is not null then
        v_done := format('%s failed task(s) of job %s queued again',
            pgfan.retry_failed(v_dl.job_id), v_dl.job_id);
    else
        raise exception 'pgfan: dead letter % (%) cannot be replayed; submit the job again',
            i_dl_id, v_dl.error;
    end if;
    update pgfan.dead_letter set replayed_at = now() where dl_id = i_dl_id;
    return v_done;
end;
$$ language plpgsql
set search_path = pg_catalog, pg_temp;
