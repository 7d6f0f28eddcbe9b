-- pgfan_node.runnable_tasks(busy, limit): the tasks the executor may start now, and the
-- ones that may follow them in the same batch.
--
-- Runnable: claimed, or running outside a transaction block (left by a crash: run again,
-- at-least-once), not already being run by this executor (i_busy), and no earlier
-- unfinished task in the same lane, so one lane runs strictly in task_id order while
-- different lanes and lane-less tasks run in parallel.
--
-- Each runnable lane head comes with the lane's next unfinished tasks: the executor may
-- run them after their head in the same node transaction (a batch runs its tasks in
-- order), and never elsewhere before the head has finished; it enforces that in memory.
-- Without them a lane of small tasks (run_parallel's) would pay a node transaction each.
--
-- The executor asks this when it runs short of startable tasks. As a SQL function (with
-- its SET clause) the body was parsed and planned at every call, several times the cost
-- of running it; as PL/pgSQL with a cached generic plan it kept whatever plan suited the
-- table when it was new and empty (a scan of every task ever run). So: PL/pgSQL, parsed
-- once, with a plan made for each call's arguments and the table's current size.
create or replace function pgfan_node.runnable_tasks(i_busy bigint[], i_limit integer)
returns setof pgfan_node.task as $$
begin
    return query
    with heads as (
        select t.*
          from pgfan_node.task t
         where (t.state = 'claimed' or (t.state = 'running' and not t.tx))
           and t.task_id <> all(coalesce(i_busy, '{}'))
           and (t.lane is null or not exists (
                    select 1 from pgfan_node.task e
                     where e.lane = t.lane and e.task_id < t.task_id
                       and e.state in ('claimed', 'running')))
         order by t.task_id
         limit i_limit
    )
    select r.*
      from (select h.* from heads h
            union all
            select s.*
              from heads h
             cross join lateral (
                   select n.*
                     from pgfan_node.task n
                    where n.lane = h.lane and n.task_id > h.task_id
                      and n.state in ('claimed', 'running')
                      and n.task_id <> all(coalesce(i_busy, '{}'))
                    order by n.task_id
                    limit i_limit) s
             where h.lane is not null) r
     order by r.task_id
     limit i_limit;
end;
$$ language plpgsql stable
set search_path = pg_catalog, pg_temp
set plan_cache_mode = force_custom_plan;

revoke all on function pgfan_node.runnable_tasks(bigint[], integer) from public;
