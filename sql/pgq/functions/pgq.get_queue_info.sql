-- pgq.get_queue_info([queue]): per-queue configuration and ticker state, for monitoring
-- and for pgqd's legacy maintenance path. ticker_lag is the age of the latest tick;
-- ev_per_sec is the event rate over the last (up to) 20 tick intervals; ev_new counts
-- events inserted since the latest tick. Unknown queue: no rows.
-- Public information, so not SECURITY DEFINER; reading the event sequence needs
-- SELECT on it, as in PgQ.

create or replace function pgq.get_queue_info(
    in i_queue_name text,
    out queue_name text,
    out queue_ntables integer,
    out queue_cur_table integer,
    out queue_rotation_period interval,
    out queue_switch_time timestamptz,
    out queue_external_ticker boolean,
    out queue_ticker_paused boolean,
    out queue_ticker_max_count integer,
    out queue_ticker_max_lag interval,
    out queue_ticker_idle_period interval,
    out ticker_lag interval,
    out ev_per_sec float8,
    out ev_new bigint,
    out last_tick_id bigint)
returns setof record as $$
begin
    return query
    select q.queue_name, q.queue_ntables, q.queue_cur_table, q.queue_rotation_period,
           q.queue_switch_time, q.queue_external_ticker, q.queue_ticker_paused,
           q.queue_ticker_max_count, q.queue_ticker_max_lag, q.queue_ticker_idle_period,
           now() - lt.tick_time,
           ((lt.tick_event_seq - ft.tick_event_seq)
               / nullif(extract(epoch from lt.tick_time - ft.tick_time), 0))::float8,
           pgq.seq_getval(q.queue_event_seq) - lt.tick_event_seq,
           lt.tick_id
      from pgq.queue q
      left join lateral (
            select t.tick_id, t.tick_time, t.tick_event_seq
              from pgq.tick t
             where t.tick_queue = q.queue_id
             order by t.tick_queue desc, t.tick_id desc
             limit 1) lt on true
      left join lateral (
            -- oldest of the last 21 ticks = start of the last 20 intervals
            select w.tick_time, w.tick_event_seq
              from (select t.tick_id, t.tick_time, t.tick_event_seq
                      from pgq.tick t
                     where t.tick_queue = q.queue_id
                     order by t.tick_queue desc, t.tick_id desc
                     limit 21) w
             order by w.tick_id
             limit 1) ft on true
     where q.queue_name = i_queue_name;
end;
$$ language plpgsql;

create or replace function pgq.get_queue_info(
    out queue_name text,
    out queue_ntables integer,
    out queue_cur_table integer,
    out queue_rotation_period interval,
    out queue_switch_time timestamptz,
    out queue_external_ticker boolean,
    out queue_ticker_paused boolean,
    out queue_ticker_max_count integer,
    out queue_ticker_max_lag interval,
    out queue_ticker_idle_period interval,
    out ticker_lag interval,
    out ev_per_sec float8,
    out ev_new bigint,
    out last_tick_id bigint)
returns setof record as $$
begin
    return query
    select f.*
      from pgq.queue q,
           lateral pgq.get_queue_info(q.queue_name) f
     order by q.queue_name;
end;
$$ language plpgsql;
