-- pgfan.queue_activity(queue [, cap]): events per second over the last minute and events
-- not yet ticked, counted, each up to `cap`.
--
-- pgq.get_queue_info's ev_per_sec and ev_new come from event sequence positions, which a
-- forced tick moves on by a thousand or more; these count the events in the queue's
-- tables instead (the ones committed in the last 60 s, and the ones the latest tick's
-- snapshot does not cover). They read the queue's tables, so each count stops at `cap`.
-- SECURITY DEFINER for pgfan_operator (`pgfan status`): only the counts leave.
create or replace function pgfan.queue_activity(i_queue text, i_cap integer default 1000000,
                                                out events_per_sec float8, out new_events bigint)
as $$
declare
    v_table regclass;
    v_snapshot txid_snapshot;
begin
    select q.queue_data_pfx::regclass, t.tick_snapshot into v_table, v_snapshot
      from pgq.queue q
      left join lateral (select k.tick_snapshot from pgq.tick k
                          where k.tick_queue = q.queue_id
                          order by k.tick_queue desc, k.tick_id desc limit 1) t on true
     where q.queue_name = i_queue;
    if not found then
        return;
    end if;
    execute format('select (select count(*) from (select 1 from %1$s e
                                                   where e.ev_time > now() - interval ''60 s''
                                                   limit $2) a)::float8 / 60,
                           (select count(*) from (select 1 from %1$s e
                                                   where $1 is null
                                                      or not pg_catalog.txid_visible_in_snapshot(e.ev_txid, $1)
                                                   limit $2) b)', v_table)
       into events_per_sec, new_events
      using v_snapshot, i_cap;
end;
$$ language plpgsql stable security definer
set search_path = pg_catalog, pg_temp;
