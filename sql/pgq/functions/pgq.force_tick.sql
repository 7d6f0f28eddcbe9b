-- pgq.force_tick(queue): make the next ticker run tick this queue.
--
-- It does not tick itself (only the serialized ticker may create ticks); it pushes
-- the event sequence far enough ahead that the ticker sees more than max_count new
-- events. Returns the current last tick id: the caller polls until the queue's last
-- tick differs from it. NULL for an unknown queue.
create or replace function pgq.force_tick(i_queue_name text)
returns bigint as $$
declare
    q record;
    v_tick_id bigint;
begin
    select queue_id, queue_event_seq, queue_ticker_max_count into q
        from pgq.queue
        where queue_name = i_queue_name;
    if not found then
        return null;
    end if;
    select tick_id into v_tick_id
        from pgq.tick
        where tick_queue = q.queue_id
        order by tick_queue desc, tick_id desc
        limit 1;
    perform pgq.seq_setval(q.queue_event_seq,
        nextval(q.queue_event_seq::regclass) + q.queue_ticker_max_count::bigint * 2 + 1000);
    return v_tick_id;
end;
$$ language plpgsql security definer
set search_path = pg_catalog, pgq, pg_temp;
