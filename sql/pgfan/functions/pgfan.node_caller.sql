-- pgfan.node_caller(node): may the session act as this node? Returns the node's pull queue.
--
-- Every function a node daemon calls on the master (its queue, claims, heartbeats,
-- cancellations, results) starts with this check. Allowed: the role bound to the node by
-- pgfan.node_set_login; a transaction that carries the node's key in the setting
-- pgfan.node_key (pgfan.node_set_pool_key: daemons behind PgBouncer share one login, and
-- the key is set for each transaction, never for the session, so it cannot stay behind on
-- a pooled server connection for the next client); and any member of the role that owns
-- pgfan (the installing owner, superusers), so a daemon running with the owner's
-- credentials keeps working. Anyone else gets insufficient_privilege, so n1's login or key
-- cannot read, claim or answer for n2.
-- SECURITY DEFINER so that current_user is always pgfan's owner here, whoever calls it;
-- session_user is the login role, which SET ROLE cannot change.
create or replace function pgfan.node_caller(i_node text)
returns text as $$
declare
    v_queue text;
    v_login text;
    v_digest bytea;
    v_key text := current_setting('pgfan.node_key', true);
begin
    select queue_name, login_role, pool_key_digest into v_queue, v_login, v_digest
      from pgfan.node where node_name = i_node;
    if not found then
        raise exception 'pgfan: unknown node %', i_node;
    end if;
    if session_user::text is distinct from v_login
       and (v_key is null or v_key = '' or v_digest is null
            or sha256(convert_to(v_key, 'UTF8')) <> v_digest)
       and not pgfan.caller_is_owner() then
        raise exception 'pgfan: role % may not act as node %', session_user, i_node
            using errcode = 'insufficient_privilege';
    end if;
    return v_queue;
end;
$$ language plpgsql stable security definer
set search_path = pg_catalog, pg_temp;
