-- pgfan.node_references(): trigger on pgfan.node, for each renamed or deleted node: what
-- the foreign key from pgfan.task did (schema.sql says why it went). A renamed node's
-- tasks follow it ("on update cascade"); a node that still has tasks cannot be deleted
-- (foreign_key_violation, as the key raised). Unlike the key it takes no lock on task
-- rows, so a task routed to the node by a transaction still open is not seen: disable a
-- node (pgfan.node_set_state) before deleting it, so that nothing is routed to it.
--
-- Per node row, and only on a rename or a delete, which are rare: heartbeats and state
-- changes do not fire it. SECURITY DEFINER, as the key's cascade ran with the owner's
-- rights.
create or replace function pgfan.node_references()
returns trigger as $$
begin
    if tg_op = 'UPDATE' then
        update pgfan.task set node_name = new.node_name where node_name = old.node_name;
        return null;
    end if;
    if exists (select 1 from pgfan.task where node_name = old.node_name) then
        raise exception 'pgfan: node % still has tasks', old.node_name
            using errcode = 'foreign_key_violation';
    end if;
    return old;
end;
$$ language plpgsql security definer
set search_path = pg_catalog, pg_temp;

revoke all on function pgfan.node_references() from public;

drop trigger if exists node_renamed on pgfan.node;
create trigger node_renamed after update of node_name on pgfan.node
    for each row when (old.node_name is distinct from new.node_name)
    execute function pgfan.node_references();
drop trigger if exists node_deleted on pgfan.node;
create trigger node_deleted before delete on pgfan.node
    for each row execute function pgfan.node_references();
