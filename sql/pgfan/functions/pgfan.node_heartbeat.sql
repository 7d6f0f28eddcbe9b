-- pgfan.node_heartbeat(node, workers, version): a node daemon is alive.
--
-- `any` routing prefers nodes with a recent heartbeat; `pgfan status` reports its age.
create or replace function pgfan.node_heartbeat(i_node text, i_workers integer, i_version text)
returns void as $$
begin
    update pgfan.node
       set heartbeat = now(), workers = i_workers, version = i_version
     where node_name = i_node;
    if not found then
        raise exception 'pgfan: unknown node %', i_node;
    end if;
end;
$$ language plpgsql
set search_path = pg_catalog, pg_temp;
