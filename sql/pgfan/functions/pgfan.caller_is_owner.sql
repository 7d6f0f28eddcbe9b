-- pgfan.caller_is_owner(): is the session's login role a member of the role that owns pgfan
-- (the installing owner; superusers are members of every role)?
--
-- Such callers are trusted with everything: they own the data anyway. The checks of the
-- producer and node functions let them through and hold everyone else to their own jobs
-- or their own node. SECURITY DEFINER so that current_user is pgfan's owner whoever calls;
-- session_user is the login role, which SET ROLE cannot change. PL/pgSQL: every door of
-- the node calls this, and a SQL function with a SET clause is planned at every call.
create or replace function pgfan.caller_is_owner()
returns boolean as $$
begin
    return pg_has_role(session_user, current_user, 'member');
end;
$$ language plpgsql stable security definer
set search_path = pg_catalog, pg_temp;
