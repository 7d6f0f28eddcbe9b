-- pgfan grants: the roles an operator gives to login roles (README, "Security").
--
--   pgfan_producer  submit jobs and follow them: submit, run_on_all, run_parallel,
--                   push_event (the raw form, into push_queue only), wait, job_status,
--                   job_summary, and result/cancel of its own jobs; no table
--   pgfan_operator  read-only: `pgfan status` (pgfan's tables, job summaries)
--   pgfan_node      a node daemon's doors (pgfan.node_caller decides which node a login
--                   may act as, from pgfan.node.login_role): its queue, claims, heartbeat,
--                   cancellations, results
-- The owner keeps everything else (relay, reducer, administration). EXECUTE is revoked from
-- PUBLIC on every pgfan function first, so a function added later stays owner-only until
-- it is listed here. The roles are cluster-wide NOLOGIN roles; an owner without CREATEROLE
-- cannot create them, and their grants are then skipped (with a notice), as for pgq's.
do $roles$
declare
    r text;
begin
    foreach r in array array['pgfan_producer', 'pgfan_operator', 'pgfan_node'] loop
        if not exists (select 1 from pg_catalog.pg_roles where rolname = r) then
            begin
                execute format('create role %I nologin', r);
            exception
                when insufficient_privilege then
                    raise notice 'pgfan: cannot create role %, grants to it are skipped', r;
                when unique_violation or duplicate_object then
                    null; -- another database of this cluster created it concurrently
            end;
        end if;
    end loop;
end
$roles$;

revoke all on all functions in schema pgfan from public;
revoke all on all tables in schema pgfan from public;
revoke all on all sequences in schema pgfan from public;

do $grants$
declare
    g record;
begin
    for g in
        select * from (values
            ('pgfan_producer', 'usage on schema pgfan'),
            ('pgfan_producer', 'execute on function pgfan.submit(text, text, text, text, interval, boolean, text, text, text[], integer, text[])'),
            ('pgfan_producer', 'execute on function pgfan.run_on_all(text, text)'),
            ('pgfan_producer', 'execute on function pgfan.run_parallel(text[], integer, text)'),
            ('pgfan_producer', 'execute on function pgfan.wait(bigint, interval)'),
            ('pgfan_producer', 'execute on function pgfan.result(bigint)'),
            ('pgfan_producer', 'execute on function pgfan.cancel(bigint)'),
            ('pgfan_producer', 'execute on function pgfan.job_status(bigint)'),
            ('pgfan_producer', 'execute on function pgfan.job_summary(bigint)'),
            ('pgfan_producer', 'execute on function pgfan.push_event(text, text, text)'),
            ('pgfan_operator', 'usage on schema pgfan'),
            ('pgfan_operator', 'select on pgfan.node, pgfan.partition, pgfan.job, pgfan.task, pgfan.dead_letter'),
            ('pgfan_operator', 'execute on function pgfan.job_status(bigint)'),
            ('pgfan_operator', 'execute on function pgfan.job_summary(bigint)'),
            ('pgfan_node', 'usage on schema pgfan'),
            ('pgfan_node', 'execute on function pgfan.node_register(text)'),
            ('pgfan_node', 'execute on function pgfan.node_next_batch(text, interval, integer, interval)'),
            ('pgfan_node', 'execute on function pgfan.node_batch_cursor(text, bigint, text, integer)'),
            ('pgfan_node', 'execute on function pgfan.node_batch_events(text, bigint)'),
            ('pgfan_node', 'execute on function pgfan.node_event_retry(text, bigint, bigint, integer)'),
            ('pgfan_node', 'execute on function pgfan.node_finish_batch(text, bigint)'),
            ('pgfan_node', 'execute on function pgfan.tasks_claimed(text, bigint[])'),
            ('pgfan_node', 'execute on function pgfan.node_heartbeat(text, integer, text)'),
            ('pgfan_node', 'execute on function pgfan.cancelled_tasks(text, bigint[])'),
            ('pgfan_node', 'execute on function pgfan.node_ship_results(text, bigint[], text[], text[])')
        ) v(grantee, what)
    loop
        if exists (select 1 from pg_catalog.pg_roles where rolname = g.grantee) then
            execute format('grant %s to %I', g.what, g.grantee);
        end if;
    end loop;
end
$grants$;
