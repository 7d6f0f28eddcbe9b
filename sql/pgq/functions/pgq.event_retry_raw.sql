-- pgq.event_retry_raw(queue, consumer, retry_after, ev_id, ev_time, ev_retry, type, data,
-- extra1..4): put an arbitrary event into retry_queue for one subscription, as if that
-- consumer had retried it (admin tool, used e.g. to re-inject events). A NULL ev_id takes
-- a fresh id from the queue's event sequence; returns the event id.

create or replace function pgq.event_retry_raw(
    x_queue text,
    x_consumer text,
    x_retry_after timestamptz,
    x_ev_id bigint,
    x_ev_time timestamptz,
    x_ev_retry integer,
    x_ev_type text,
    x_ev_data text,
    x_ev_extra1 text,
    x_ev_extra2 text,
    x_ev_extra3 text,
    x_ev_extra4 text)
returns bigint as $$
declare
    _sub    integer;
    _queue  integer;
    _seq    text;
    _id     bigint := x_ev_id;
begin
    select s.sub_id, s.sub_queue, q.queue_event_seq
      into _sub, _queue, _seq
      from pgq.queue q
      join pgq.subscription s on s.sub_queue = q.queue_id
      join pgq.consumer c on c.co_id = s.sub_consumer
     where q.queue_name = x_queue
       and c.co_name = x_consumer;
    if not found then
        raise exception 'consumer not registered';
    end if;

    if _id is null then
        _id := nextval(_seq::regclass);
    end if;

    -- ev_time is NOT NULL in retry_queue; like insert_event, a missing time means now
    insert into pgq.retry_queue (ev_retry_after, ev_queue, ev_id, ev_time, ev_owner, ev_retry,
                                 ev_type, ev_data, ev_extra1, ev_extra2, ev_extra3, ev_extra4)
    values (x_retry_after, _queue, _id, coalesce(x_ev_time, now()), _sub, x_ev_retry,
            x_ev_type, x_ev_data, x_ev_extra1, x_ev_extra2, x_ev_extra3, x_ev_extra4);
    return _id;
end;
$$ language plpgsql security definer
set search_path = pg_catalog, pgq, pg_temp;
