-- pgfan.rebalance_partitions(): the hash partition map after a node joined, left, drained
-- or came back, with as few keys moved as possible. Returns how many partitions moved.
--
-- Only active nodes own partitions, and only those whose daemon has started (sent a
-- heartbeat) take partitions: a node added while others run gets its share at its first
-- heartbeat (pgfan.node_heartbeat), not before, so no hash key waits for a daemon that was
-- never started. Until any node's daemon has started (an installation being set up) every
-- active node counts as started; one that was dealt partitions then keeps them until it
-- starts. Each taking node gets its fair share of the rest, rounded up for those that
-- already own the most, so the nodes that keep their share keep their partitions (and
-- their keys). Partitions that must move are those of nodes that are no longer active and
-- a taking node's surplus over its share (its highest numbers); they go to the taking
-- nodes below their share, in name order. No taking node at all: the map stays as it is
-- (routing by hash then says that its node is not active).
-- Called by node_add, node_set_state, node_remove and a node's first heartbeat; raises a
-- NOTICE with what moved.
create or replace function pgfan.rebalance_partitions()
returns integer as $$
declare
    v_count integer;
    v_active integer;
    v_moved integer;
    v_started boolean;
begin
    v_started := exists (select 1 from pgfan.node where state = 'active' and heartbeat is not null);
    -- Partitions of active nodes not started yet stay where they are and are not shared.
    select count(*) into v_count
      from pgfan.partition p join pgfan.node n using (node_name)
     where not (n.state = 'active' and n.heartbeat is null and v_started);
    select count(*) into v_active from pgfan.node
     where state = 'active' and (heartbeat is not null or not v_started);
    if v_count = 0 or v_active = 0 then
        return 0;
    end if;
    with owned as (
        select n.node_name, count(p.part_no) as owned
          from pgfan.node n left join pgfan.partition p using (node_name)
         where n.state = 'active' and (n.heartbeat is not null or not v_started)
         group by n.node_name
    ), frozen as (
        select n.node_name from pgfan.node n
         where n.state = 'active' and n.heartbeat is null and v_started
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
         where k.node_name not in (select node_name from frozen)
           and (s.node_name is null or k.r <= s.owned - s.share)
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
        raise notice 'pgfan: % hash partitions moved to other nodes (about % %% of hash keys)',
            v_moved, round(100.0 * v_moved / (select count(*) from pgfan.partition), 1);
    end if;
    return v_moved;
end;
$$ language plpgsql
set search_path = pg_catalog, pg_temp;
