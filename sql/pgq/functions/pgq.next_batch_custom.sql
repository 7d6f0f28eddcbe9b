-- pgq.next_batch_custom(queue, consumer, min_lag, min_count, min_interval): open the
-- consumer's next batch and describe its tick interval.
--
-- Crash safety: while a batch is open (sub_batch set, finish_batch not yet called) the
-- same batch id and ticks are returned again, so a consumer that died mid-batch, or a
-- RemoteConsumer that committed its side but not finish_batch, sees the same batch
-- again; pgq_ext relies on the id being stable.
--
-- Otherwise the batch ends at the next tick after sub_last_tick, or at the tick chosen
-- by find_tick_helper when min_count/min_interval ask for larger batches. min_lag keeps
-- the consumer at least that far behind: a chosen tick newer than now() - min_lag means
-- "no batch yet". With no batch, every column is NULL and the subscription is not
-- touched (so idle polling writes nothing).
--
-- The subscription row is read without a lock; the UPDATE re-checks that no concurrent
-- call has opened or finished a batch in between, and if one did, the call is repeated
-- so that both callers get the same open batch.

create or replace function pgq.next_batch_custom(
    in i_queue_name text,
    in i_consumer_name text,
    in i_min_lag interval,
    in i_min_count integer,
    in i_min_interval interval,
    out batch_id bigint,
    out cur_tick_id bigint,
    out prev_tick_id bigint,
    out cur_tick_time timestamptz,
    out prev_tick_time timestamptz,
    out cur_tick_event_seq bigint,
    out prev_tick_event_seq bigint)
as $$
declare
    _queue      integer;
    _consumer   integer;
    _last_tick  bigint;
begin
    select s.sub_queue, s.sub_consumer, s.sub_last_tick, s.sub_batch,
           prev.tick_id, prev.tick_time, prev.tick_event_seq,
           nxt.tick_id, nxt.tick_time, nxt.tick_event_seq
      into _queue, _consumer, _last_tick, batch_id,
           prev_tick_id, prev_tick_time, prev_tick_event_seq,
           cur_tick_id, cur_tick_time, cur_tick_event_seq
      from pgq.queue q
      join pgq.consumer c on c.co_name = i_consumer_name
      join pgq.subscription s on s.sub_queue = q.queue_id and s.sub_consumer = c.co_id
      left join pgq.tick prev on prev.tick_queue = s.sub_queue and prev.tick_id = s.sub_last_tick
      left join pgq.tick nxt on nxt.tick_queue = s.sub_queue and nxt.tick_id = s.sub_next_tick
     where q.queue_name = i_queue_name;
    if not found then
        raise exception 'Not subscriber to queue: %/%', i_queue_name, i_consumer_name;
    end if;
    if prev_tick_id is null then
        raise exception 'PgQ corruption: Consumer % on queue % does not see tick %',
            i_consumer_name, i_queue_name, _last_tick;
    end if;

    if batch_id is not null then
        return;
    end if;

    if i_min_count is null and i_min_interval is null then
        select t.tick_id, t.tick_time, t.tick_event_seq
          into cur_tick_id, cur_tick_time, cur_tick_event_seq
          from pgq.tick t
         where t.tick_queue = _queue
           and t.tick_id > _last_tick
         order by t.tick_queue, t.tick_id
         limit 1;
    else
        select h.next_tick_id, h.next_tick_time, h.next_tick_seq
          into cur_tick_id, cur_tick_time, cur_tick_event_seq
          from pgq.find_tick_helper(_queue, _last_tick, prev_tick_time, prev_tick_event_seq,
                                    i_min_count, i_min_interval) h;
    end if;

    if cur_tick_id is null
       or (i_min_lag is not null and cur_tick_time > now() - i_min_lag) then
        cur_tick_id := null;
        cur_tick_time := null;
        cur_tick_event_seq := null;
        prev_tick_id := null;
        prev_tick_time := null;
        prev_tick_event_seq := null;
        return;
    end if;

    update pgq.subscription
       set sub_batch = nextval('pgq.batch_id_seq'),
           sub_next_tick = cur_tick_id,
           sub_active = now()
     where sub_queue = _queue
       and sub_consumer = _consumer
       and sub_batch is null
       and sub_last_tick = _last_tick
    returning sub_batch into batch_id;
    if not found then
        -- lost a race with a concurrent next_batch/finish_batch: report its state
        select f.batch_id, f.cur_tick_id, f.prev_tick_id, f.cur_tick_time,
               f.prev_tick_time, f.cur_tick_event_seq, f.prev_tick_event_seq
          into batch_id, cur_tick_id, prev_tick_id, cur_tick_time,
               prev_tick_time, cur_tick_event_seq, prev_tick_event_seq
          from pgq.next_batch_custom(i_queue_name, i_consumer_name,
                                     i_min_lag, i_min_count, i_min_interval) f;
    end if;
    return;
end;
$$ language plpgsql security definer
set search_path = pg_catalog, pgq, pg_temp;
