-- pgfan_node.runnable_tasks(busy, limit): the tasks the executor may start now.
--
-- Runnable: claimed, or running outside a transaction block (left by a crash: run again,
-- at-least-once), not already being run by this executor (i_busy), and no earlier
-- unfinished task in the same lane, so one lane runs strictly in task_id order while
-- different lanes and lane-less tasks run in parallel.
create or replace function pgfan_node.runnable_tasks(i_busy bigint[], i_limit integer)
returns setof pgfan_node.task as $$
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
$$ language sql stable
set search_path = pg_catalog, pg_temp;
