-- pgfan.set_partitions(count): the hash partition map with `count` partitions over the
-- active nodes.
--
-- count must be a power of two (hash:<key> masks hashtext(key) with count - 1). The first
-- map deals the partitions round-robin to the active nodes in name order. A map that exists
-- changes without moving keys that need not move: growing it splits each partition into
-- partitions of the same node (a key's new partition, hash & (count - 1), masks to its old
-- one), shrinking it keeps the owners of the partitions that remain (only the keys of the
-- dropped ones move), and then pgfan.rebalance_partitions evens out the shares. A NOTICE says
-- how many partitions (so which share of the keys) changed node. Returns the number of
-- partitions.
create or replace function pgfan.set_partitions(i_count integer)
returns integer as $$
declare
    v_nodes text[];
    v_old integer;
    v_owner text[];
    v_moved integer;
begin
    if i_count < 1 or (i_count & (i_count - 1)) <> 0 then
        raise exception 'pgfan: the partition count must be a power of two, not %', i_count;
    end if;
    select array_agg(node_name order by node_name) into v_nodes
      from pgfan.node where state = 'active';
    if v_nodes is null then
        raise exception 'pgfan: no active node to assign partitions to';
    end if;
    select count(*) into v_old from pgfan.partition;
    if v_old = 0 then
        insert into pgfan.partition (part_no, node_name)
        select p, v_nodes[1 + p % cardinality(v_nodes)]
          from generate_series(0, i_count - 1) p;
        return i_count;
    end if;
    v_owner := array(select node_name from pgfan.partition order by part_no);
    delete from pgfan.partition;
    insert into pgfan.partition (part_no, node_name)
    select p, v_owner[1 + (p & (v_old - 1))]
      from generate_series(0, i_count - 1) p;
    -- A split map is as even as the old one was (twice its differences): evened out only
    -- when shrinking or when partitions sit on nodes that are no longer active.
    if i_count < v_old or exists (select 1 from pgfan.partition p join pgfan.node n using (node_name)
                                  where n.state <> 'active') then
        perform pgfan.rebalance_partitions();
    end if;
    -- Keys that changed node, counted over the finer of the two maps: a key's slot x there
    -- lies in old partition x & (old - 1) and in new partition x & (count - 1).
    select count(*) into v_moved
      from generate_series(0, greatest(v_old, i_count) - 1) x
      join pgfan.partition p on p.part_no = x & (i_count - 1)
     where p.node_name <> v_owner[1 + (x & (v_old - 1))];
    raise notice 'pgfan: % hash partitions (were %); about % %% of hash keys changed node',
        i_count, v_old, round(100.0 * v_moved / greatest(v_old, i_count), 1);
    return i_count;
end;
$$ language plpgsql
set search_path = pg_catalog, pg_temp;
