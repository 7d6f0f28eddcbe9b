-- pgfan.node_set_state(node_name, state): active, draining or disabled.
--
-- draining: the node gets no new work from `all`, `any` and hash routing, but finishes
-- what it has and still accepts work addressed to it by name; disabled: nothing new at
-- all (addressing it by name is an error). pgfan.node_drain/node_disable/node_activate
-- are the spelled-out forms. Hash partitions follow (pgfan.rebalance_partitions): a node
-- that stops being active hands its partitions to the active ones, one that becomes
-- active again takes its share back, moving no other keys. A removed node comes back
-- only through pgfan.node_add (which makes its queue again).
create or replace function pgfan.node_set_state(i_node_name text, i_state text)
returns text as $$
declare
    v_old text;
begin
    if i_state = 'removed' then
        raise exception 'pgfan: remove a node with pgfan.node_remove(%)', quote_literal(i_node_name);
    end if;
    select state into v_old from pgfan.node where node_name = i_node_name for update;
    if not found then
        raise exception 'pgfan: unknown node %', i_node_name;
    elsif v_old = 'removed' then
        raise exception 'pgfan: node % was removed; pgfan.node_add(%) adds it again',
            i_node_name, quote_literal(i_node_name);
    end if;
    update pgfan.node set state = i_state where node_name = i_node_name;
    perform pgfan.rebalance_partitions();
    return i_state;
end;
$$ language plpgsql
set search_path = pg_catalog, pg_temp;

create or replace function pgfan.node_drain(i_node_name text)
returns text as $$ select pgfan.node_set_state(i_node_name, 'draining') $$ language sql;

create or replace function pgfan.node_disable(i_node_name text)
returns text as $$ select pgfan.node_set_state(i_node_name, 'disabled') $$ language sql;

create or replace function pgfan.node_activate(i_node_name text)
returns text as $$ select pgfan.node_set_state(i_node_name, 'active') $$ language sql;
