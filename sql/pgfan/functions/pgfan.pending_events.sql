-- pgfan.pending_events(queue, consumer [, cap]): how many events the consumer has yet to
-- read, counted, up to `cap`.
--
-- PgQ's pending_events (pgq.get_consumer_info) is the distance between two ticks' event
-- sequence positions: cheap, but a forced tick moves the sequence on by a thousand or
-- more, so two real events can show as 2002. This counts the events themselves: those of
-- the queue's tables that the consumer's last tick does not cover (committed after its
-- snapshot), whether ticked yet or not. It reads the queue's tables, so it stops at `cap`.
-- NULL for an unknown queue or consumer. SECURITY DEFINER for pgfan_operator (`pgfan
-- status`), who may not read the queues' events: only the count leaves.
create or replace function pgfan.pending_events(i_queue text, i_consumer text,
                                                i_cap integer default 100000)
returns bigint as $$
declare
    v_table regclass;
    v_snapshot txid_snapshot;
    v_n bigint;
begin
    select q.queue_data_pfx::regclass, t.tick_snapshot into v_table, v_snapshot
      from pgq.queue q
      join pgq.subscription s on s.sub_queue = q.queue_id
      join pgq.consumer c on c.co_id = s.sub_consumer
      join pgq.tick t on t.tick_queue = q.queue_id and t.tick_id = s.sub_last_tick
     where q.queue_name = i_queue and c.co_name = i_consumer;
    if not found then
        return null;
    end if;
    execute format('select count(*) from (select 1 from %s e
                                           where not pg_catalog.txid_visible_in_snapshot(e.ev_txid, $1)
                                           limit $2) x', v_table)
       into v_n
      using v_snapshot, i_cap;
    return v_n;
end;
$$ language plpgsql stable security definer
set search_path = pg_catalog, pg_temp;
