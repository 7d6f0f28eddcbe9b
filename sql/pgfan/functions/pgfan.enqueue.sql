-- pgfan.enqueue(queue, type, data, extra1..4): pgq.insert_event for pgfan's own hand-offs,
-- plus a wake-up for the ticker.
--
-- The NOTIFY is delivered when the caller's transaction commits, which is exactly when the
-- event becomes visible to a tick; the ticker ticks the queue then instead of at its next
-- poll, and even if an earlier tick had already counted the event while it was invisible
-- (PgQ would treat the queue as idle and back off). Notifications of one transaction with
-- the same queue name are merged by the server, so a batch of events costs one.
create or replace function pgfan.enqueue(
    i_queue text, i_type text, i_data text,
    i_extra1 text, i_extra2 text, i_extra3 text, i_extra4 text)
returns bigint as $$
begin
    perform pg_notify('pgfan_ticker_wake', i_queue);
    return pgq.insert_event(i_queue, i_type, i_data, i_extra1, i_extra2, i_extra3, i_extra4);
end;
$$ language plpgsql
set search_path = pg_catalog, pg_temp;
