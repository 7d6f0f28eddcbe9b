-- pgfan.node_set_login(node, role): bind a login role to a node, or unbind it (NULL).
--
-- The bound role may act as that node through the node door functions (pgfan.node_caller)
-- and as no other node; one role serves at most one node. The role also needs membership
-- in pgfan_node, which grants EXECUTE on those functions:
--     create role n1_login login; grant pgfan_node to n1_login;
--     select pgfan.node_set_login('n1', 'n1_login');
-- Owner only (not granted to any pgfan role). Returns the node's queue.
create or replace function pgfan.node_set_login(i_node text, i_role text)
returns text as $$
declare
    v_queue text;
begin
    if i_role is not null and not exists (select 1 from pg_roles where rolname = i_role) then
        raise exception 'pgfan: role % does not exist', i_role;
    end if;
    update pgfan.node set login_role = i_role where node_name = i_node
    returning queue_name into v_queue;
    if not found then
        raise exception 'pgfan: unknown node %', i_node;
    end if;
    return v_queue;
end;
$$ language plpgsql
set search_path = pg_catalog, pg_temp;
