-- pgfan.node_heartbeat(node, workers, version): a node daemon is alive.
--
-- `any` routing prefers nodes with a recent heartbeat; `pgfan status` reports its age.
-- A node door: only a caller that may act as the node (pgfan.node_caller).
create or replace function pgfan.node_heartbeat(i_node text, i_workers integer, i_version text)
returns void as $$
begin
    perform pgfan.node_caller(i_node);
    update pgfan.node
       set heartbeat = now(), workers = i_workers, version = i_version
     where node_name = i_node;
end;
$$ language plpgsql security definer
set search_path = pg_catalog, pg_temp;
