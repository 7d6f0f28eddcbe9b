-- pgfan_node.task_begin_many(task_ids, run_keys): a task connection starts a batch of
-- transactional tasks in one transaction.
--
-- The set form of task_begin for the batch executor: every task whose run key matches and
-- that is still claimed is taken (started, attempt counted, the transaction id kept for
-- task_finish_many) in task_id order, so two runners lock in the same order. Returns the
-- ids taken; the others were finished meanwhile or are not this caller's to run.
create or replace function pgfan_node.task_begin_many(i_task_ids bigint[], i_run_keys text[])
returns setof bigint as $$
begin
    return query
    with wanted as (
        select t.task_id
          from pgfan_node.task t
          join unnest(i_task_ids, i_run_keys) k(task_id, run_key)
            on t.task_id = k.task_id and t.run_key = k.run_key
         where t.tx and t.state = 'claimed'
         order by t.task_id
           for update of t
    )
    update pgfan_node.task t
       set started_at = now(),
           attempts = t.attempts + 1,
           run_xid = pg_catalog.txid_current()
      from wanted w
     where t.task_id = w.task_id and t.state = 'claimed'
    returning t.task_id;
end;
$$ language plpgsql security definer
set search_path = pg_catalog, pg_temp;

revoke all on function pgfan_node.task_begin_many(bigint[], text[]) from public;
grant execute on function pgfan_node.task_begin_many(bigint[], text[]) to public;
