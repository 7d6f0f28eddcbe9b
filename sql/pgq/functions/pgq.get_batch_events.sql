-- pgq.get_batch_events(batch_id): all events of a batch, ordered by ev_id.
-- Hot path: one dynamic query built by batch_event_sql. Not SECURITY DEFINER, so the
-- caller needs SELECT on the event tables (pgq_reader has it).

create or replace function pgq.get_batch_events(
    in x_batch_id bigint,
    out ev_id bigint,
    out ev_time timestamptz,
    out ev_txid bigint,
    out ev_retry int4,
    out ev_type text,
    out ev_data text,
    out ev_extra1 text,
    out ev_extra2 text,
    out ev_extra3 text,
    out ev_extra4 text)
returns setof record as $$
begin
    return query execute pgq.batch_event_sql(x_batch_id);
end;
$$ language plpgsql;
