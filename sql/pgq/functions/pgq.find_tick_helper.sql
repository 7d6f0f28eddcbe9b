-- pgq.find_tick_helper(...): pick the end tick of a batch for next_batch_custom when
-- the consumer asked for batches of at least i_min_count events or i_min_interval time.
--
-- Such consumers want big batches, so the queue's latest tick is preferred: if it
-- satisfies one of the thresholds and overshoots none of them by more than a factor of
-- two, it becomes the batch end (one larger batch instead of several small ones). If
-- the latest tick overshoots (the consumer has fallen far behind), the batch ends at
-- the first tick after i_prev_tick_id that satisfies a threshold, so a lagging consumer
-- catches up in batches of roughly the requested size instead of one huge batch.
-- Returns NULLs when no tick qualifies yet. Event counts are differences of
-- tick_event_seq (the event sequence at tick time), times are tick_time.
-- Internal helper of next_batch_custom; not SECURITY DEFINER.

create or replace function pgq.find_tick_helper(
    in i_queue_id integer,
    in i_prev_tick_id bigint,
    in i_prev_tick_time timestamptz,
    in i_prev_tick_seq bigint,
    in i_min_count bigint,
    in i_min_interval interval,
    out next_tick_id bigint,
    out next_tick_time timestamptz,
    out next_tick_seq bigint)
as $$
declare
    _id         bigint;
    _time       timestamptz;
    _seq        bigint;
    _ok         boolean := false;
    _overshoot  boolean := false;
begin
    select t.tick_id, t.tick_time, t.tick_event_seq
      into _id, _time, _seq
      from pgq.tick t
     where t.tick_queue = i_queue_id
       and t.tick_id > i_prev_tick_id
     order by t.tick_queue desc, t.tick_id desc
     limit 1;
    if not found then
        return;
    end if;

    if i_min_count is not null then
        if _seq - i_prev_tick_seq >= i_min_count then
            _ok := true;
        end if;
        if _seq - i_prev_tick_seq > i_min_count * 2 then
            _overshoot := true;
        end if;
    end if;
    if i_min_interval is not null then
        if _time - i_prev_tick_time >= i_min_interval then
            _ok := true;
        end if;
        if _time - i_prev_tick_time > i_min_interval * 2 then
            _overshoot := true;
        end if;
    end if;

    if _overshoot then
        select t.tick_id, t.tick_time, t.tick_event_seq
          into _id, _time, _seq
          from pgq.tick t
         where t.tick_queue = i_queue_id
           and t.tick_id > i_prev_tick_id
           and (t.tick_event_seq - i_prev_tick_seq >= i_min_count
                or t.tick_time - i_prev_tick_time >= i_min_interval)
         order by t.tick_queue, t.tick_id
         limit 1;
        _ok := found;
    end if;

    if _ok then
        next_tick_id := _id;
        next_tick_time := _time;
        next_tick_seq := _seq;
    end if;
    return;
end;
$$ language plpgsql stable;
