-- pgfan.job_result (view): a done job's result rows (job_id, row_no, row_data), what
-- pgfan.result returns.
--
-- The stored rows (pgfan.job_result_row, written by reduce_job and complete_jobs) and, for
-- a job with result_in_task, its one task's rows turned into jsonb on the way out. For a
-- single-task job without a reduce, the result is that task's rows as they are (row_no
-- included), so complete_jobs only marks the job instead of copying every row: one row
-- write and its index entry less per such job, the most common job of all (a raw event
-- with one target). Reading does the copy's work, pgfan.concat_row, with the same
-- function, so the jsonb is the same.
-- A view, not a function, so that everything that read the table reads the same rows.
-- The owner's writes go to the stored rows (pgfan.job_result_write); other roles have no
-- right on it, as on the table.
create or replace view pgfan.job_result as
select r.job_id, r.row_no, r.row_data
  from pgfan.job_result_row r
union all
select t.job_id, r.row_no,
       pgfan.concat_row(t.result_columns, pgfan.concat_kinds(t.result_types), r.vals)
  from pgfan.job j
  join pgfan.task t on t.job_id = j.job_id
  join pgfan.task_row r on r.task_id = t.task_id
 where j.result_in_task and t.state = 'done' and cardinality(t.result_columns) > 0;
