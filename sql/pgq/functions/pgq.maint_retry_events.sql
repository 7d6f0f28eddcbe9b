-- pgq.maint_retry_events(): move due retry events back into their queues.
--
-- The events are re-inserted with their original id, time, owner (the retrying
-- subscription) and retry count, so only that consumer sees them again, in a later
-- batch. At most 10 per call keeps each transaction short; the daemon calls again
-- while the result is non-zero. The SHARE UPDATE EXCLUSIVE lock lets only one mover
-- run while consumers keep adding retries. Returns the number moved.
create or replace function pgq.maint_retry_events()
returns integer as $$
declare
    ev record;
    v_moved integer := 0;
begin
    lock table pgq.retry_queue in share update exclusive mode;
    for ev in
        select q.queue_name, r.ev_id, r.ev_time, r.ev_owner, r.ev_retry, r.ev_type, r.ev_data,
               r.ev_extra1, r.ev_extra2, r.ev_extra3, r.ev_extra4
            from pgq.retry_queue r
            join pgq.queue q on q.queue_id = r.ev_queue
            where r.ev_retry_after <= now()
            order by r.ev_retry_after
            limit 10
    loop
        perform pgq.insert_event_raw(ev.queue_name, ev.ev_id, ev.ev_time, ev.ev_owner, ev.ev_retry,
                                     ev.ev_type, ev.ev_data, ev.ev_extra1, ev.ev_extra2,
                                     ev.ev_extra3, ev.ev_extra4);
        delete from pgq.retry_queue
            where ev_owner = ev.ev_owner and ev_id = ev.ev_id;
        v_moved := v_moved + 1;
    end loop;
    return v_moved;
end;
$$ language plpgsql;
