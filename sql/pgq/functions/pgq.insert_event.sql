-- pgq.insert_event(queue, type, data[, extra1..4]): the producer API; returns the event id.
--
-- The 3-argument form delegates to the 7-argument one, and the table triggers call the
-- 7-argument form too, so it is the single hook point for everything that produces
-- events. Only the 7-argument form is SECURITY DEFINER: pgq_writer may produce events
-- without having INSERT on the event tables.
create or replace function pgq.insert_event(queue_name text, ev_type text, ev_data text)
returns bigint as $$
begin
    return pgq.insert_event(queue_name, ev_type, ev_data, null, null, null, null);
end;
$$ language plpgsql;

create or replace function pgq.insert_event(
    queue_name text, ev_type text, ev_data text,
    ev_extra1 text, ev_extra2 text, ev_extra3 text, ev_extra4 text)
returns bigint as $$
begin
    return pgq.insert_event_raw(queue_name, null, now(), null, null,
                                ev_type, ev_data, ev_extra1, ev_extra2, ev_extra3, ev_extra4);
end;
$$ language plpgsql security definer
set search_path = pg_catalog, pgq, pg_temp;
