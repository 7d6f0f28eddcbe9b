-- pgfan.set_partitions(count): rebuild the hash partition map over the active nodes.
--
-- count must be a power of two (hash:<key> masks hashtext(key) with count - 1). Partitions
-- are dealt round-robin to the active nodes in name order, so the same node set always
-- gives the same map. Returns the number of partitions.
create or replace function pgfan.set_partitions(i_count integer)
returns integer as $$
declare
    v_nodes text[];
begin
    if i_count < 1 or (i_count & (i_count - 1)) <> 0 then
        raise exception 'pgfan: the partition count must be a power of two, not %', i_count;
    end if;
    select array_agg(node_name order by node_name) into v_nodes
      from pgfan.node where state = 'active';
    if v_nodes is null then
        raise exception 'pgfan: no active node to assign partitions to';
    end if;
    delete from pgfan.partition;
    insert into pgfan.partition (part_no, node_name)
    select p, v_nodes[1 + p % cardinality(v_nodes)]
      from generate_series(0, i_count - 1) p;
    return i_count;
end;
$$ language plpgsql
set search_path = pg_catalog, pg_temp;
