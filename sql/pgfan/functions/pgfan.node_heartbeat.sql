-- pgfan.node_heartbeat(node, workers, version): a node daemon is alive.
--
-- `any` routing prefers nodes with a recent heartbeat; `pgfan status` reports its age.
-- The first heartbeat of a node says its daemon has started: only then does the node take
-- `all`/`any` work and its share of the hash partitions (once any node has started).
-- A node door: only a caller that may act as the node (pgfan.node_caller).
create or replace function pgfan.node_heartbeat(i_node text, i_workers integer, i_version text)
returns void as $$
begin
    perform pgfan.node_caller(i_node);
    update pgfan.node
       set heartbeat = now(), workers = i_workers, version = i_version
     where node_name = i_node and heartbeat is null;
    if found then
        -- The node's daemon has started: from now on it takes its share of the hash
        -- partitions (and all/any work, pgfan.resolve_target).
        perform pgfan.rebalance_partitions();
        return;
    end if;
    update pgfan.node
       set heartbeat = now(), workers = i_workers, version = i_version
     where node_name = i_node;
end;
$$ language plpgsql security definer
set search_path = pg_catalog, pg_temp;
