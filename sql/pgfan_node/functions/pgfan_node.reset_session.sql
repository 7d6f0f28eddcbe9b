-- pgfan_node.reset_session(): after each `sql` task of a batch, what its SQL may have
-- changed in the session, put back inside the batch's transaction (DISCARD ALL cannot run
-- in one): role, cursors, prepared statements, LISTEN, temporary tables, sequence state and
-- advisory locks. The batch sends `reset all` just before this call, as a statement of its
-- own, so that a timeout the task set is gone before the call starts.
--
-- One call instead of seven more statements in the query string: each costs its own
-- parse, portal and reply. pgbench on a 2-core machine, a task being savepoint, `select 1`
-- and release (about 260 us): the eight-statement reset added about 550 us to it, RESET
-- ALL and this call about 100 us. On a batch of small statements that was most of it.
--
-- Not SECURITY DEFINER and EXECUTE to PUBLIC: it runs as whatever role the task left
-- (RESET ROLE is not allowed in a SECURITY DEFINER function), and undoes only what that
-- session did. Every name in it is qualified or a utility command, so a search_path or
-- temporary object the task left behind cannot stand in for anything here. CLOSE ALL
-- leaves the portal running this call, which is the only one it cannot close.
create or replace function pgfan_node.reset_session()
returns void as $$
begin
    execute 'reset role';
    execute 'close all';
    execute 'deallocate all';
    execute 'unlisten *';
    execute 'discard temp';
    execute 'discard sequences';
    perform pg_catalog.pg_advisory_unlock_all();
end;
$$ language plpgsql;

revoke all on function pgfan_node.reset_session() from public;
grant execute on function pgfan_node.reset_session() to public;
