-- pgfan.rebalance_partitions(): the hash partition map after a node joined, left, drained
-- or came back, with as few keys moved as possible. Returns how many partitions moved.
--
-- Only active nodes own partitions. Each gets its fair share, count / active nodes,
-- rounded up for those that already own the most, so the nodes that keep their share keep
-- their partitions (and their keys). Partitions that must move are those of nodes that are
-- no longer active and an active node's surplus over its share (its highest numbers);
-- they go to the active nodes below their share, in name order. No active node at all:
-- the map stays as it is (routing by hash then says that its node is not active).
-- Called by node_add, node_set_state and node_remove; raises a NOTICE with what moved.
create or replace function pgfan.rebalance_partitions()
returns integer as $$
declare
    v_count integer;
    v_active integer;
    v_moved integer;
begin
    select count(*) into v_count from pgfan.partition;
    select count(*) into v_active from pgfan.node where state = 'active';
    if v_count = 0 or v_active = 0 then
        return 0;
    end if;
    with owned as (
        select n.node_name, count(p.part_no) as owned
          from pgfan.node n left join pgfan.partition p using (node_name)
         where n.state = 'active'
         group by n.node_name
    ), share as (
        select node_name, owned,
               v_count / v_active
               + (row_number() over (order by owned desc, node_name) <= v_count % v_active)::integer
                 as share
          from owned
    ), ranked as (
        select p.part_no, p.node_name,
               row_number() over (partition by p.node_name order by p.part_no desc) as r
          from pgfan.partition p
    ), leaving as (
        select row_number() over (order by k.part_no) as k, k.part_no
          from ranked k left join share s using (node_name)
         where s.node_name is null or k.r <= s.owned - s.share
    ), taking as (
        select row_number() over (order by s.node_name, g) as k, s.node_name
          from share s, generate_series(1, s.share - s.owned) g
    )
    update pgfan.partition p
       set node_name = t.node_name
      from leaving l join taking t using (k)
     where p.part_no = l.part_no;
    get diagnostics v_moved = row_count;
    if v_moved > 0 then
        raise notice 'pgfan: % of % hash partitions moved to other nodes (about % %% of hash keys)',
            v_moved, v_count, round(100.0 * v_moved / v_count, 1);
    end if;
    return v_moved;
end;
$$ language plpgsql
set search_path = pg_catalog, pg_temp;
