-- pgq.get_consumer_info([queue[, consumer]]): one row per subscription, for monitoring
-- (pgqadm/PGQStatus) and for clients that read their own position (SerialConsumer
-- reads last_tick). lag is the age of the consumer's last finished tick, last_seen the
-- time since it last opened or finished a batch, pending_events the number of events
-- ticked after its position (event sequence difference). pgq_coop subconsumers have
-- their own subscription rows and are listed individually. Unknown names: no rows.

create or replace function pgq.get_consumer_info(
    in i_queue_name text,
    in i_consumer_name text,
    out queue_name text,
    out consumer_name text,
    out lag interval,
    out last_seen interval,
    out last_tick bigint,
    out current_batch bigint,
    out next_tick bigint,
    out pending_events bigint)
returns setof record as $$
begin
    return query
    select q.queue_name, c.co_name,
           now() - t.tick_time,
           now() - s.sub_active,
           s.sub_last_tick, s.sub_batch, s.sub_next_tick,
           lt.tick_event_seq - t.tick_event_seq
      from pgq.queue q
      join pgq.subscription s on s.sub_queue = q.queue_id
      join pgq.consumer c on c.co_id = s.sub_consumer
      left join pgq.tick t on t.tick_queue = s.sub_queue and t.tick_id = s.sub_last_tick
      left join lateral (
            select t2.tick_event_seq
              from pgq.tick t2
             where t2.tick_queue = q.queue_id
             order by t2.tick_queue desc, t2.tick_id desc
             limit 1) lt on true
     where q.queue_name = i_queue_name
       and c.co_name = i_consumer_name;
end;
$$ language plpgsql security definer
set search_path = pg_catalog, pgq, pg_temp;

create or replace function pgq.get_consumer_info(
    in i_queue_name text,
    out queue_name text,
    out consumer_name text,
    out lag interval,
    out last_seen interval,
    out last_tick bigint,
    out current_batch bigint,
    out next_tick bigint,
    out pending_events bigint)
returns setof record as $$
begin
    return query
    select f.*
      from pgq.queue q
      join pgq.subscription s on s.sub_queue = q.queue_id
      join pgq.consumer c on c.co_id = s.sub_consumer,
           lateral pgq.get_consumer_info(q.queue_name, c.co_name) f
     where q.queue_name = i_queue_name
     order by c.co_name;
end;
$$ language plpgsql security definer
set search_path = pg_catalog, pgq, pg_temp;

create or replace function pgq.get_consumer_info(
    out queue_name text,
    out consumer_name text,
    out lag interval,
    out last_seen interval,
    out last_tick bigint,
    out current_batch bigint,
    out next_tick bigint,
    out pending_events bigint)
returns setof record as $$
begin
    return query
    select f.*
      from pgq.queue q
      join pgq.subscription s on s.sub_queue = q.queue_id
      join pgq.consumer c on c.co_id = s.sub_consumer,
           lateral pgq.get_consumer_info(q.queue_name, c.co_name) f
     order by q.queue_name, c.co_name;
end;
$$ language plpgsql security definer
set search_path = pg_catalog, pgq, pg_temp;
