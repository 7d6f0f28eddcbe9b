-- pgfan_node.runnable_tasks(busy, limit): the tasks the executor may start now.
--
-- Runnable: claimed, or running outside a transaction block (left by a crash: run again,
-- at-least-once), not already being run by this executor (i_busy), and no earlier
-- unfinished task in the same lane, so one lane runs strictly in task_id order while
-- different lanes and lane-less tasks run in parallel.
--
-- The executor asks this before every task it starts. As a SQL function (with its SET
-- clause) the body was parsed and planned at every call, several times the cost of running
-- it; as PL/pgSQL with a cached generic plan it kept whatever plan suited the table when
-- it was new and empty (a scan of every task ever run). So: PL/pgSQL, parsed once, with a
-- plan made for each call's arguments and the table's current size.
create or replace function pgfan_node.runnable_tasks(i_busy bigint[], i_limit integer)
returns setof pgfan_node.task as $$
begin
    return query
    select t.*
      from pgfan_node.task t
     where (t.state = 'claimed' or (t.state = 'running' and not t.tx))
       and t.task_id <> all(coalesce(i_busy, '{}'))
       and (t.lane is null or not exists (
                select 1 from pgfan_node.task e
                 where e.lane = t.lane and e.task_id < t.task_id
                   and e.state in ('claimed', 'running')))
     order by t.task_id
     limit i_limit;
end;
$$ language plpgsql stable
set search_path = pg_catalog, pg_temp
set plan_cache_mode = force_custom_plan;

revoke all on function pgfan_node.runnable_tasks(bigint[], integer) from public;
