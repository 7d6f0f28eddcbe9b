-- pgfan schema on the master: nodes, the hash partition map, jobs, tasks, their results
-- and dead letters, plus the two queues of the pipeline (docs/pipeline.md).
--
-- Everything is idempotent because `pgfan install` re-runs this file on every upgrade.
-- States are checked text columns rather than enums so an upgrade can add a state
-- without a type rewrite.

create schema if not exists pgfan;

create table if not exists pgfan.node (
    node_name   text primary key
                check (node_name ~ '^[a-z0-9_]{1,48}$'),
    state       text not null default 'active'
                check (state in ('active', 'draining', 'disabled')),
    queue_name  text not null unique,
    workers     integer,
    version     text,
    heartbeat   timestamptz,
    added_at    timestamptz not null default now()
);

-- hash:<key> routes to partition hashtext(key) & (count - 1); the count is a power of two
-- so that growing the map splits partitions instead of moving every key.
create table if not exists pgfan.partition (
    part_no     integer primary key check (part_no >= 0),
    node_name   text not null references pgfan.node on update cascade
);

create sequence if not exists pgfan.job_id_seq;
create sequence if not exists pgfan.task_id_seq;

create table if not exists pgfan.job (
    job_id          bigint primary key default nextval('pgfan.job_id_seq'),
    kind            text not null,
    target          text,
    -- the request as key -> array of values, the same shape for pgfan.submit() and for
    -- parsed raw events, so the relay treats both alike
    params          jsonb not null default '{}',
    reduce          text,
    policy          text not null default 'all',
    deadline        timestamptz,
    state           text not null default 'submitted'
                    check (state in ('submitted', 'running', 'done', 'failed', 'cancelled')),
    error           text,
    n_tasks         integer,
    submitted_by    text not null default current_user,
    submitted_at    timestamptz not null default now(),
    routed_at       timestamptz,
    finished_at     timestamptz,
    source_queue    text,
    source_ev_id    bigint,
    unique (source_queue, source_ev_id)
);
-- Jobs that can expire (pgfan.expire_jobs) are listed in a table of their own, filled by a
-- trigger when a job with a deadline is made (pgfan.job_deadline_track) and emptied by
-- expire_jobs once their deadline has passed. Not an index on pgfan.job: an index whose
-- predicate names the job's state makes every state change of every job a non-HOT update
-- (new entries in each of the job's indexes), deadline or not; without it, the update that
-- finishes a job changes no indexed column, and with room left on its page (fillfactor)
-- writes no index entry.
drop index if exists pgfan.job_unfinished_idx;
drop index if exists pgfan.job_deadline_idx;
do $deadlines$
begin
    if pg_catalog.to_regclass('pgfan.job_deadline') is null then
        create table pgfan.job_deadline (
            job_id      bigint primary key,
            deadline    timestamptz not null
        );
        create index job_deadline_at_idx on pgfan.job_deadline (deadline);
        insert into pgfan.job_deadline (job_id, deadline)
        select job_id, deadline from pgfan.job
         where deadline is not null and state in ('submitted', 'running');
    end if;
end
$deadlines$;
alter table pgfan.job set (fillfactor = 80);

-- A job's stored result rows. Readers use the view pgfan.job_result, which adds the rows of
-- jobs whose result is read from their one task (pgfan.job.result_in_task; the view's
-- file says why). Up to that change this table was pgfan.job_result itself: it is renamed
-- in place, rows and all.
do $rename$
begin
    if exists (select 1 from pg_catalog.pg_class
                where oid = pg_catalog.to_regclass('pgfan.job_result') and relkind = 'r') then
        alter table pgfan.job_result rename to job_result_row;
    end if;
end
$rename$;
create table if not exists pgfan.job_result_row (
    job_id      bigint not null,
    row_no      integer not null,
    row_data    jsonb,
    primary key (job_id, row_no)
);
-- True when the job's result rows are its single task's rows (pgfan.complete_jobs), read
-- through the view pgfan.job_result instead of copied into pgfan.job_result_row.
alter table pgfan.job add column if not exists result_in_task boolean not null default false;

create table if not exists pgfan.task (
    task_id         bigint primary key default nextval('pgfan.task_id_seq'),
    job_id          bigint not null,
    node_name       text not null,
    part_no         integer not null default 0,
    kind            text not null,
    payload         text not null,
    lane            text,
    options         text,
    state           text not null default 'queued'
                    check (state in ('queued', 'claimed', 'running', 'done', 'failed', 'cancelled')),
    error           text,
    queued_at       timestamptz not null default now(),
    claimed_at      timestamptz,
    finished_at     timestamptz,
    result_columns  text[],
    result_types    text[],
    result_rows     integer
);
create index if not exists task_job_idx on pgfan.task (job_id);
-- Open tasks per node (routing to `any` counts them). Keyed on finished_at, which every
-- final state sets, rather than on state: then a task's claim (state and claimed_at) changes
-- no indexed column, and with room left on its page (fillfactor) it is a HOT update that
-- writes no index entry: one of a task's three writes, on the delivery benchmark's hot path.
drop index if exists pgfan.task_open_idx;
create index if not exists task_unfinished_idx on pgfan.task (node_name)
    where finished_at is null;
alter table pgfan.task set (fillfactor = 80);

create table if not exists pgfan.task_row (
    task_id     bigint not null,
    row_no      integer not null,
    vals        text[] not null,
    primary key (task_id, row_no)
);

-- No foreign keys between the pipeline's rows: the checks cost a trigger query and a row
-- lock per inserted task, result row and job result row (about a fifth of the routing
-- statement, pg_stat_statements on the delivery benchmark), for references that only
-- pgfan's own functions write, each from the row it has just made or locked in the same
-- statement or transaction. What the keys also did is kept by triggers that cost nothing
-- on the hot path (pgfan.cascade_deletes, pgfan.node_references): deleting a job deletes
-- its tasks and result rows, deleting a task its rows, renaming a node moves its tasks,
-- and a node with tasks cannot be deleted. Installations of the previous version lose
-- the keys here.
alter table pgfan.task drop constraint if exists task_job_id_fkey;
alter table pgfan.task drop constraint if exists task_node_name_fkey;
alter table pgfan.task_row drop constraint if exists task_row_task_id_fkey;
alter table pgfan.job_result_row drop constraint if exists job_result_job_id_fkey;

create table if not exists pgfan.dead_letter (
    dl_id       bigserial primary key,
    created_at  timestamptz not null default now(),
    source      text not null check (source in ('relay', 'node', 'reducer')),
    job_id      bigint,
    task_id     bigint,
    queue_name  text,
    ev_id       bigint,
    ev_type     text,
    ev_data     text,
    ev_target   text,
    error       text not null
);
alter table pgfan.dead_letter add column if not exists replayed_at timestamptz;

-- The login role a node daemon uses on the master (pgfan.node_set_login). The node's door
-- functions (pgfan.node_caller) let that role act as this node and as no other; NULL: only
-- the owner of the pgfan schema (and superusers) can act as the node.
alter table pgfan.node add column if not exists login_role text;

-- removed (pgfan.node_remove): gone from routing, its queue dropped and its login unbound;
-- the row stays so that the history of its tasks and jobs still names it.
alter table pgfan.node drop constraint if exists node_state_check;
alter table pgfan.node add constraint node_state_check
    check (state in ('active', 'draining', 'disabled', 'removed'));
create unique index if not exists node_login_role_idx on pgfan.node (login_role);

-- SHA-256 of the node's key (pgfan.node_set_pool_key): a daemon that sends the key in a
-- transaction may act as this node whatever its login (pooled daemons share one login).
alter table pgfan.node add column if not exists pool_key_digest bytea;

-- pgfan.route_batch builds its pull events itself (one builder for both writers, the
-- bundled core's bulk insert and the PgQ extension's insert_event); the function that
-- built them for it is gone.
drop function if exists pgfan.queue_tasks(text[], bigint[], bigint[], text[], text[], text[], text[]);

-- The pipeline's own queues and their consumers. They tick as soon as they have events
-- (ticker_max_lag 0): pgfan's ticker notices new events within its poll period, so a task
-- is not held back by PgQ's default 3 s batching; that is only set when the queue is new,
-- to keep an operator's tuning. The relay and reducer are registered here, not when their
-- daemons first start, so that jobs submitted before then are not skipped (a consumer
-- registers at the latest tick).
do $queues$
declare
    q record;
begin
    for q in select * from (values ('push_queue', 'pgfan_relay'),
                                   ('pgfan_results', 'pgfan_reducer')) v(queue, consumer) loop
        if pgq.create_queue(q.queue) = 1 then
            perform pgq.set_queue_config(q.queue, 'ticker_max_lag', '0');
        end if;
        perform pgq.register_consumer(q.queue, q.consumer);
    end loop;
end
$queues$;
