-- pgfan grants: the roles an operator gives to login roles (README, "Security").
--
--   pgfan_producer  submit jobs and follow them: submit, run_on_all, run_parallel,
--                   push_event (the raw form, into push_queue only), wait, job_status,
--                   job_summary, and result/cancel of its own jobs; no table
--   pgfan_operator  read-only: `pgfan status` (pgfan's tables, job summaries)
--   pgfan_node      a node daemon's doors (pgfan.node_caller decides which node a login
--                   may act as, from pgfan.node.login_role): its queue, claims, heartbeat,
--                   cancellations, results
--   pgfan_ticker    the ticker: PgQ's pgq_admin, which its maintenance functions need (they
--                   run with the caller's rights); nothing in pgfan
--   pgfan_relay     the relay: pgq_reader (consume push_queue), the routing doors
--                   (route_event, route_events, route_batch, reject_event, all SECURITY DEFINER), the
--                   request columns of pgfan.job, and the pgq_ext ledger its producer
--                   databases' batches are recorded in
--   pgfan_reducer   the reducer: pgq_reader (consume pgfan_results), the doors
--                   record_results(_finish), complete_jobs, expire_jobs (SECURITY DEFINER: the reduce
--                   SQL runs as the owner, whoever runs the reducer), and inserting the dead
--                   letter of a malformed result event
-- No daemon role may write a job's reduce SQL: pgfan.check_raw_reduce holds a non-owner relay
-- to the reduce each raw event carries, and nothing else of theirs names a job's reduce.
-- The owner keeps everything else (administration). EXECUTE is revoked from
-- PUBLIC on every pgfan function first, so a function added later stays owner-only until
-- it is listed here. The roles are cluster-wide NOLOGIN roles; an owner without CREATEROLE
-- cannot create them, and their grants are then skipped (with a notice), as for pgq's.
do $roles$
declare
    r text;
begin
    foreach r in array array['pgfan_producer', 'pgfan_operator', 'pgfan_node',
                             'pgfan_ticker', 'pgfan_relay', 'pgfan_reducer'] loop
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
            ('pgfan_producer', 'execute on function pgfan.partials(bigint)'),
            ('pgfan_producer', 'execute on function pgfan.job_of_event(bigint, text)'),
            ('pgfan_producer', 'execute on function pgfan.cancel(bigint)'),
            ('pgfan_producer', 'execute on function pgfan.job_status(bigint)'),
            ('pgfan_producer', 'execute on function pgfan.job_summary(bigint)'),
            ('pgfan_producer', 'execute on function pgfan.push_event(text, text, text)'),
            ('pgfan_operator', 'usage on schema pgfan'),
            ('pgfan_operator', 'select on pgfan.node, pgfan.partition, pgfan.job, pgfan.task, pgfan.dead_letter'),
            ('pgfan_operator', 'execute on function pgfan.job_status(bigint)'),
            ('pgfan_operator', 'execute on function pgfan.job_summary(bigint)'),
            ('pgfan_operator', 'execute on function pgfan.pending_events(text, text, integer)'),
            ('pgfan_operator', 'execute on function pgfan.queue_activity(text, integer)'),
            ('pgfan_operator', 'execute on function pgfan.connected_nodes()'),
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
            ('pgfan_node', 'execute on function pgfan.node_ship_results(text, bigint[], text[], text[])'),
            ('pgfan_node', 'execute on function pgfan.node_ship_batch(text, bigint[], text[], text[])'),
            ('pgfan_relay', 'usage on schema pgfan'),
            ('pgfan_relay', 'execute on function pgfan.route_event(text, bigint, bigint, text, text, jsonb, text, text, interval, text[], text, integer, text)'),
            ('pgfan_relay', 'execute on function pgfan.route_events(text, bigint[], bigint[], text[], text[], jsonb[], text[], text[], interval[], jsonb[], text[], integer[], text[])'),
            ('pgfan_relay', 'execute on function pgfan.route_batch(text, bigint[], bigint[], text[], text[], jsonb[], text[], text[], interval[], jsonb[], text[], integer[], text[])'),
            ('pgfan_relay', 'execute on function pgfan.reject_event(text, bigint, text, text, text, bigint, text)'),
            -- the relay reads the request of a submitted job (route.rs, job_rows); no result,
            -- error or submitter
            ('pgfan_relay', 'select (job_id, kind, params) on pgfan.job'),
            ('pgfan_reducer', 'usage on schema pgfan'),
            ('pgfan_reducer', 'execute on function pgfan.record_results(bigint[], text[], jsonb[])'),
            ('pgfan_reducer', 'execute on function pgfan.record_results_finish(bigint[], text[], jsonb[])'),
            ('pgfan_reducer', 'execute on function pgfan.complete_jobs(bigint[])'),
            ('pgfan_reducer', 'execute on function pgfan.expire_jobs()'),
            -- a malformed result event's dead letter (reducer.rs, dead_letter): insert only
            ('pgfan_reducer', 'insert (source, queue_name, ev_id, ev_type, ev_data, ev_target, error) on pgfan.dead_letter'),
            ('pgfan_reducer', 'usage on sequence pgfan.dead_letter_dl_id_seq')
        ) v(grantee, what)
    loop
        if exists (select 1 from pg_catalog.pg_roles where rolname = g.grantee) then
            execute format('grant %s to %I', g.what, g.grantee);
        end if;
    end loop;
end
$grants$;

-- The daemons' PgQ roles, PgQ's own (sql/pgq/grants.sql, or the extension's): the relay and
-- the reducer consume with pgq_reader; the ticker's maintenance (retry moves, rotation)
-- runs with the caller's rights on PgQ's tables, which is what pgq_admin is for. Granting a
-- membership needs CREATEROLE (PostgreSQL 16: ADMIN OPTION on the PgQ role); without it the
-- membership is skipped with a notice, like the roles themselves.
do $members$
declare
    m record;
begin
    for m in
        select g.oid as grp_oid, g.rolname as grp, r.oid as member_oid, r.rolname as member
          from (values ('pgq_admin', 'pgfan_ticker'), ('pgq_reader', 'pgfan_relay'),
                       ('pgq_reader', 'pgfan_reducer')) v(grp, member)
          join pg_catalog.pg_roles g on g.rolname = v.grp
          join pg_catalog.pg_roles r on r.rolname = v.member
    loop
        continue when exists (select 1 from pg_catalog.pg_auth_members a
                               where a.roleid = m.grp_oid and a.member = m.member_oid);
        begin
            execute format('grant %I to %I', m.grp, m.member);
        exception
            when insufficient_privilege then
                raise notice 'pgfan: cannot grant % to %, the daemon needs it', m.grp, m.member;
            when unique_violation then
                null; -- an install in another database of this cluster granted it concurrently
        end;
    end loop;
end
$members$;

-- A relay that routes producer databases records their batches in the pgq_ext ledger here
-- (src/relay/producer.rs): pgq_ext's functions run with the caller's rights. Skipped with a
-- notice where pgq_ext is an extension the owner may not grant on.
do $ledger$
begin
    if exists (select 1 from pg_catalog.pg_roles where rolname = 'pgfan_relay') then
        grant usage on schema pgq_ext to pgfan_relay;
        grant select, insert, update on pgq_ext.completed_batch to pgfan_relay;
    end if;
exception
    when insufficient_privilege then
        raise notice 'pgfan: cannot grant pgq_ext''s ledger to pgfan_relay';
end
$ledger$;
