-- pgq.insert_event(queue, type, data[, extra1..4]): the producer API; returns the event id.
--
-- The 3-argument form delegates to the 7-argument one (as SQL, so the planner inlines it),
-- and the table triggers call the 7-argument form too, so it is the single hook point for
-- everything that produces events. Only the 7-argument form is SECURITY DEFINER:
-- pgq_writer may produce events without having INSERT on the event tables.
--
-- The 7-argument body below is only the form before the first build: the install then
-- regenerates it together with insert_event_raw (see pgq.insert_event_raw.sql), with the
-- static per-queue INSERTs inline. Unlike every other SECURITY DEFINER function here it
-- does not pin search_path: on the producers' hot path the GUC save and restore would cost
-- about a tenth of the call. Instead everything it names is schema-qualified, so a
-- caller's search_path cannot redirect it (tests/compat.rs tries).
create or replace function pgq.insert_event(
    queue_name text, ev_type text, ev_data text,
    ev_extra1 text, ev_extra2 text, ev_extra3 text, ev_extra4 text)
returns bigint as $$
begin
    return pgq.insert_event_raw(queue_name, null, pg_catalog.now(), null, null,
                                ev_type, ev_data, ev_extra1, ev_extra2, ev_extra3, ev_extra4);
end;
$$ language plpgsql security definer;

create or replace function pgq.insert_event(queue_name text, ev_type text, ev_data text)
returns bigint as $$
    select pgq.insert_event(queue_name, ev_type, ev_data, null, null, null, null);
$$ language sql;
