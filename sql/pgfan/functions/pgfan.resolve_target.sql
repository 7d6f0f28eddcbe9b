-- pgfan.resolve_target(target): the node names a target stands for.
--
--   <name>[,<name>...]  those nodes (each must exist and be neither disabled nor removed)
--   all                 every active node whose daemon has started (sent a heartbeat)
--   any                 one such node: a live one (its daemon connected to the master,
--                       pgfan.connected_nodes, or a heartbeat in the last 30 s) with the
--                       fewest open tasks
--   (until some node's daemon has started, every active node counts as started)
--   hash:<key>          the node owning partition hashtext(key) & (count - 1); only active
--                       nodes own partitions (pgfan.rebalance_partitions), so a draining
--                       node gets no new hash work, like all and any
-- Errors name what is wrong; the relay turns them into a failed job and a dead letter.
create or replace function pgfan.resolve_target(i_target text)
returns setof text as $$
declare
    v_name text;
    v_names text[];
    v_count integer;
    v_state text;
    -- Whether any active node's daemon has started (sent a heartbeat). Once one has, a
    -- node whose daemon never ran (added, its daemon not started yet) gets no all/any
    -- work: it would hold every such job open until it starts. Before any has, as while
    -- an installation is set up, every active node counts.
    v_started boolean;
begin
    if i_target in ('all', 'any') then
        v_started := exists (select 1 from pgfan.node
                              where state = 'active' and heartbeat is not null);
    end if;
    if i_target is null or btrim(i_target) = '' then
        raise exception 'pgfan: the event has no target (ev_extra1)';
    elsif i_target = 'all' then
        return query select n.node_name from pgfan.node n
                      where n.state = 'active' and (n.heartbeat is not null or not v_started)
                      order by n.node_name;
        if not found then
            raise exception 'pgfan: target all: no active node';
        end if;
    elsif i_target = 'any' then
        return query
            select n.node_name from pgfan.node n
             where n.state = 'active' and (n.heartbeat is not null or not v_started)
             order by not (n.node_name in (select pgfan.connected_nodes())
                           or coalesce(n.heartbeat > now() - interval '30 s', false)),
                      (select count(*) from pgfan.task t
                        where t.node_name = n.node_name and t.finished_at is null),
                      random()
             limit 1;
        if not found then
            raise exception 'pgfan: target any: no active node';
        end if;
    elsif i_target like 'hash:%' then
        select count(*) into v_count from pgfan.partition;
        if v_count = 0 then
            raise exception 'pgfan: target %: no partition map (call pgfan.set_partitions)', i_target;
        end if;
        select p.node_name, n.state into v_name, v_state
          from pgfan.partition p join pgfan.node n using (node_name)
         where p.part_no = hashtext(substr(i_target, 6)) & (v_count - 1);
        if v_name is null then
            raise exception 'pgfan: target %: the partition map has a gap', i_target;
        elsif v_state <> 'active' then
            raise exception 'pgfan: target %: node % is %, and no active node took its partitions',
                i_target, v_name, v_state;
        end if;
        return next v_name;
    else
        -- One name is by far the common target; it needs no list query.
        if position(',' in i_target) = 0 then
            v_names := array[btrim(i_target)];
        else
            select array_agg(n order by i) into v_names
              from (select btrim(x) n, min(i) i
                      from unnest(string_to_array(i_target, ',')) with ordinality u(x, i)
                     group by btrim(x)) l;
        end if;
        foreach v_name in array v_names
        loop
            select state into v_state from pgfan.node where node_name = v_name;
            if not found then
                raise exception 'pgfan: unknown node %', v_name;
            elsif v_state in ('disabled', 'removed') then
                raise exception 'pgfan: node % is %', v_name, v_state;
            end if;
            return next v_name;
        end loop;
    end if;
end;
$$ language plpgsql
set search_path = pg_catalog, pg_temp;
