-- The node daemon's door into its pull queue: pgfan.node_register, node_next_batch,
-- node_batch_cursor, node_batch_events, node_event_retry and node_finish_batch.
--
-- A node's login role is not a pgq_reader: pgq.next_batch and friends take any queue and
-- any batch id, so they would let n1 read or finish n2's events. These SECURITY DEFINER
-- wrappers take the node's name instead, check the caller may act as it
-- (pgfan.node_caller), and work only on that node's queue (pgfan_node_<node>, consumed by
-- the consumer of the same name) and on batches of that subscription. Everything else is
-- left to the PgQ function underneath, so the semantics are PgQ's.

create or replace function pgfan.node_register(i_node text)
returns integer as $$
declare
    v_queue text := pgfan.node_caller(i_node);
begin
    return pgq.register_consumer(v_queue, v_queue);
end;
$$ language plpgsql security definer
set search_path = pg_catalog, pg_temp;

create or replace function pgfan.node_next_batch(
    i_node text, i_min_lag interval, i_min_count integer, i_min_interval interval,
    out batch_id bigint, out cur_tick_id bigint, out prev_tick_id bigint,
    out cur_tick_time timestamptz)
as $$
declare
    v_queue text := pgfan.node_caller(i_node);
    v_count integer := i_min_count;
    v_interval interval := i_min_interval;
begin
    -- A run of idle ticks (no event position moved since the consumer's last tick) is
    -- taken as one batch, up to the run's last tick or, when the tick after the run comes
    -- soon enough, up to the latest tick (PgQ's rule for larger batches: find_tick_helper,
    -- asked for the run's time span, or 1,000 events, takes the latest tick unless it
    -- overshoots either twice, else the first tick that reaches one). The ticker does not
    -- announce idle ticks, so a direct node, which looks only when announced or every
    -- claim_poll_period, finds a run of them: one batch instead of one each. A batch is
    -- defined by its two ticks' snapshots, so no event is left out of a longer one.
    if i_min_count is null and i_min_interval is null then
        select last_idle.tick_time - prev.tick_time, 1000
          into v_interval, v_count
          from pgq.queue q
          join pgq.consumer c on c.co_name = v_queue
          join pgq.subscription s on s.sub_queue = q.queue_id and s.sub_consumer = c.co_id
          join pgq.tick prev on prev.tick_queue = s.sub_queue and prev.tick_id = s.sub_last_tick
          cross join lateral (
                select t.tick_id, t.tick_time
                  from pgq.tick t
                 where t.tick_queue = s.sub_queue and t.tick_id > s.sub_last_tick
                   and t.tick_event_seq = prev.tick_event_seq
                 order by t.tick_queue desc, t.tick_id desc
                 limit 1) last_idle
         where q.queue_name = v_queue and s.sub_batch is null
           and exists (select 1 from pgq.tick t
                        where t.tick_queue = s.sub_queue and t.tick_id > s.sub_last_tick
                          and t.tick_id < last_idle.tick_id);
    end if;
    select b.batch_id, b.cur_tick_id, b.prev_tick_id, b.cur_tick_time
      into batch_id, cur_tick_id, prev_tick_id, cur_tick_time
      from pgq.next_batch_custom(v_queue, v_queue, i_min_lag, v_count, v_interval) b;
    -- Looking for work is a sign of life: the heartbeat is refreshed when older than 15 s
    -- (a write at most that often, and never a node's first heartbeat, which
    -- pgfan.node_heartbeat writes). A daemon behind a pooler, whose session pgfan cannot
    -- see (pgfan.connected_nodes), then stays live at one transaction per poll.
    update pgfan.node set heartbeat = now()
     where node_name = i_node and heartbeat < now() - interval '15 s';
end;
$$ language plpgsql security definer
set search_path = pg_catalog, pg_temp;

-- Raises unless batch i_batch_id, if open at all, is an open batch of the node's own
-- consumer on its own queue. A batch open nowhere is left to PgQ to report.
create or replace function pgfan.node_check_batch(i_node text, i_batch_id bigint)
returns void as $$
declare
    v_queue text := pgfan.node_caller(i_node);
begin
    if exists (select 1
                 from pgq.subscription s
                 join pgq.queue q on q.queue_id = s.sub_queue
                 join pgq.consumer c on c.co_id = s.sub_consumer
                where s.sub_batch = i_batch_id
                  and (q.queue_name <> v_queue or c.co_name <> v_queue)) then
        raise exception 'pgfan: batch % does not belong to node %', i_batch_id, i_node
            using errcode = 'insufficient_privilege';
    end if;
end;
$$ language plpgsql stable security definer
set search_path = pg_catalog, pg_temp;

-- The cursor is declared here, with the owner's rights, and stays readable by the caller
-- for the rest of the transaction (FETCH ... FROM cursor_name); privileges are checked
-- when a cursor is opened, not at each fetch.
create or replace function pgfan.node_batch_cursor(
    i_node text, i_batch_id bigint, i_cursor_name text, i_quick_limit integer)
returns table (ev_id bigint, ev_time timestamptz, ev_txid bigint, ev_retry integer,
               ev_type text, ev_data text, ev_extra1 text, ev_extra2 text,
               ev_extra3 text, ev_extra4 text) as $$
begin
    perform pgfan.node_check_batch(i_node, i_batch_id);
    return query select * from pgq.get_batch_cursor(i_batch_id, i_cursor_name, i_quick_limit);
end;
$$ language plpgsql security definer
set search_path = pg_catalog, pg_temp;

create or replace function pgfan.node_batch_events(i_node text, i_batch_id bigint)
returns table (ev_id bigint, ev_time timestamptz, ev_txid bigint, ev_retry integer,
               ev_type text, ev_data text, ev_extra1 text, ev_extra2 text,
               ev_extra3 text, ev_extra4 text) as $$
begin
    perform pgfan.node_check_batch(i_node, i_batch_id);
    return query select * from pgq.get_batch_events(i_batch_id);
end;
$$ language plpgsql security definer
set search_path = pg_catalog, pg_temp;

create or replace function pgfan.node_event_retry(
    i_node text, i_batch_id bigint, i_event_id bigint, i_retry_seconds integer)
returns integer as $$
begin
    perform pgfan.node_check_batch(i_node, i_batch_id);
    return pgq.event_retry(i_batch_id, i_event_id, i_retry_seconds);
end;
$$ language plpgsql security definer
set search_path = pg_catalog, pg_temp;

create or replace function pgfan.node_finish_batch(i_node text, i_batch_id bigint)
returns integer as $$
begin
    perform pgfan.node_check_batch(i_node, i_batch_id);
    return pgq.finish_batch(i_batch_id);
end;
$$ language plpgsql security definer
set search_path = pg_catalog, pg_temp;
