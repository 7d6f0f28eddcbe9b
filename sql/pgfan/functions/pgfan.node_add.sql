-- pgfan.node_add(node_name [, workers]): register a node and create its pull queue.
--
-- Each node gets a queue of its own, pgfan_node_<name>, so a node that is down only lets
-- its own queue grow, and a node's credentials can later be limited to its own queue.
-- The node daemon's consumer (named like the queue) is registered now, so tasks routed
-- before the daemon first starts wait for it. Re-adding an existing node re-activates it
-- (a removed one gets its queue again). With a hash partition map, the new node takes its
-- share of the partitions from the others (pgfan.rebalance_partitions: only those keys
-- move). Returns the queue name.
create or replace function pgfan.node_add(i_node_name text, i_workers integer default null)
returns text as $$
declare
    v_queue text := 'pgfan_node_' || i_node_name;
begin
    insert into pgfan.node (node_name, queue_name, workers)
    values (i_node_name, v_queue, i_workers)
    on conflict (node_name) do update
        set state = 'active', workers = coalesce(excluded.workers, pgfan.node.workers);
    if pgq.create_queue(v_queue) = 1 then
        perform pgq.set_queue_config(v_queue, 'ticker_max_lag', '0');
    end if;
    perform pgq.register_consumer(v_queue, v_queue);
    perform pgfan.rebalance_partitions();
    return v_queue;
end;
$$ language plpgsql
set search_path = pg_catalog, pg_temp;
