-- pgfan_node schema: the node's local task table (docs/pipeline.md).
--
-- The node daemon copies the events of its pull queue into pgfan_node.task in the same
-- node transaction as the pgq_ext ledger entry of the batch (claim, exactly once), runs the
-- tasks from here (a transactional task commits its effect together with its done+result
-- row), and ships finished rows to the master's pgfan_results queue (shipped_at).
--
-- Everything is idempotent because `pgfan install` re-runs this file on every upgrade.

create schema if not exists pgfan_node;
-- Task logins reach the schema's doors (task_begin, task_finish: key-checked) and nothing
-- else: its tables grant nothing to anyone but the owner.
grant usage on schema pgfan_node to public;

create table if not exists pgfan_node.task (
    task_id     bigint primary key,
    -- null only when the pull event carried an unreadable job id (the task is then failed)
    job_id      bigint,
    kind        text not null,
    data        text not null default '',
    lane        text,
    timeout_ms  integer check (timeout_ms > 0),
    -- false: runs outside a transaction block, at-least-once (e.g. create index concurrently)
    tx          boolean not null default true,
    state       text not null default 'claimed'
                check (state in ('claimed', 'running', 'done', 'failed', 'cancelled')),
    error       text,
    -- runs started, rolled-back ones included; a transactional run that died with its
    -- daemon leaves no trace, not even here
    attempts    integer not null default 0,
    -- {"state", "error", "columns", "types", "rows"}: the result event's data
    result      jsonb,
    claimed_at  timestamptz not null default now(),
    started_at  timestamptz,
    finished_at timestamptz,
    shipped_at  timestamptz
);

-- A task's run key: a secret between the daemon (which reads it as the owner) and the task
-- connection it hands the task to, which must show it at the doors task_begin/task_finish.
-- Task SQL runs as a login with no rights on this table, so it cannot learn another
-- task's key and cannot start or finish another task.
alter table pgfan_node.task
    add column if not exists run_key text not null default pg_catalog.gen_random_uuid()::text;
-- the transaction a transactional run started in (task_begin), compared by task_finish:
-- a task that ended that transaction itself is caught there
alter table pgfan_node.task add column if not exists run_xid bigint;

-- the executor's work list: unfinished tasks, and per lane in task order
create index if not exists task_unfinished_idx on pgfan_node.task (task_id)
    where state in ('claimed', 'running');
create index if not exists task_lane_idx on pgfan_node.task (lane, task_id)
    where state in ('claimed', 'running') and lane is not null;
-- Room on each page for a task's next version: taking a task (task_begin, _many: started_at,
-- attempts, run_xid) changes no indexed column, so with room it is a HOT update that adds
-- no index entries.
alter table pgfan_node.task set (fillfactor = 70);
-- the shipper's work list
create index if not exists task_unshipped_idx on pgfan_node.task (task_id)
    where shipped_at is null and state in ('done', 'failed', 'cancelled');
