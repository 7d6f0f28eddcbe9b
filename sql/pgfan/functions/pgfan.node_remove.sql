-- pgfan.node_remove(node_name): take a node out of the installation for good.
--
-- Only a node without open work: its queued, claimed or running tasks would be stranded,
-- so it refuses then and says how to get there (drain, wait or cancel those jobs). The
-- node's pull queue is dropped and its master login unbound (that login then reaches
-- nothing); its hash partitions go to the active nodes (pgfan.rebalance_partitions). The
-- node's row stays, in state `removed`, so that the jobs and tasks it ran keep their
-- history; routing refuses it by name and never picks it otherwise. pgfan.node_add(name)
-- brings it back. Returns the number of tasks it ever ran, kept as history.
create or replace function pgfan.node_remove(i_node_name text)
returns bigint as $$
declare
    v_node pgfan.node;
    v_open bigint;
    v_history bigint;
begin
    select * into v_node from pgfan.node where node_name = i_node_name for update;
    if not found then
        raise exception 'pgfan: unknown node %', i_node_name;
    elsif v_node.state = 'removed' then
        return (select count(*) from pgfan.task where node_name = i_node_name);
    end if;
    select count(*) filter (where state in ('queued', 'claimed', 'running')), count(*)
      into v_open, v_history
      from pgfan.task where node_name = i_node_name;
    if v_open > 0 then
        raise exception 'pgfan: node % still has % open task(s)', i_node_name, v_open
            using hint = format('drain it first (pgfan.node_drain(%L)) and let them finish, '
                                'or cancel their jobs (pgfan.cancel(job_id)); then remove it',
                                i_node_name);
    end if;
    update pgfan.node set state = 'removed', login_role = null, pool_key_digest = null
     where node_name = i_node_name;
    perform pgfan.rebalance_partitions();
    if exists (select 1 from pgfan.partition where node_name = i_node_name) then
        raise exception 'pgfan: node % owns hash partitions and no active node can take them',
            i_node_name
            using hint = 'activate or add another node first';
    end if;
    if exists (select 1 from pgq.queue where queue_name = v_node.queue_name) then
        perform pgq.drop_queue(v_node.queue_name, true);
    end if;
    return v_history;
end;
$$ language plpgsql
set search_path = pg_catalog, pg_temp;
