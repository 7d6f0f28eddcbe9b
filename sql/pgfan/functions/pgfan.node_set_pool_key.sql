-- pgfan.node_set_pool_key(node, key): let a node's daemon act as that node by a key, or
-- stop it (NULL).
--
-- Behind PgBouncer in transaction mode, the daemons of a large fleet share one server
-- login (a PgBouncer pool is per login: one login per node would keep a server connection
-- per node). The doors cannot tell those daemons apart by session_user, so a daemon set up
-- this way sends its node's key with every master transaction (the transaction-local
-- setting pgfan.node_key), and pgfan.node_caller compares it with the digest stored here.
-- Only the digest is stored. A key is at least 32 characters (e.g. `openssl rand -hex 32`).
-- Owner only (not granted to any pgfan role). Returns the node's queue.
create or replace function pgfan.node_set_pool_key(i_node text, i_key text)
returns text as $$
declare
    v_queue text;
begin
    if i_key is not null and length(i_key) < 32 then
        raise exception 'pgfan: a node key has at least 32 characters'
            using hint = 'make one with: openssl rand -hex 32';
    end if;
    update pgfan.node set pool_key_digest = sha256(convert_to(i_key, 'UTF8'))
     where node_name = i_node
    returning queue_name into v_queue;
    if not found then
        raise exception 'pgfan: unknown node %', i_node;
    end if;
    return v_queue;
end;
$$ language plpgsql
set search_path = pg_catalog, pg_temp;
