-- pgq.next_batch_info(queue, consumer): next_batch_custom without batch-size tuning;
-- returns the batch id plus the tick interval (ids, times, event sequence values).
-- See next_batch_custom for the open-batch (crash-safe redo) behaviour.

create or replace function pgq.next_batch_info(
    in i_queue_name text,
    in i_consumer_name text,
    out batch_id bigint,
    out cur_tick_id bigint,
    out prev_tick_id bigint,
    out cur_tick_time timestamptz,
    out prev_tick_time timestamptz,
    out cur_tick_event_seq bigint,
    out prev_tick_event_seq bigint)
as $$
begin
    select f.batch_id, f.cur_tick_id, f.prev_tick_id, f.cur_tick_time,
           f.prev_tick_time, f.cur_tick_event_seq, f.prev_tick_event_seq
      into batch_id, cur_tick_id, prev_tick_id, cur_tick_time,
           prev_tick_time, cur_tick_event_seq, prev_tick_event_seq
      from pgq.next_batch_custom(i_queue_name, i_consumer_name, null, null, null) f;
    return;
end;
$$ language plpgsql;
