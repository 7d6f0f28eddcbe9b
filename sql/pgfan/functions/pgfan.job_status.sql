-- pgfan.job_status(job_id): per target node, how many of the job's tasks are in which
-- state, and a one-line progress text ("2 of 4 done, 1 failed").
create or replace function pgfan.job_status(i_job_id bigint)
returns table (node_name text, tasks integer, queued integer, claimed integer, running integer,
               done integer, failed integer, cancelled integer, progress text) as $$
    select t.node_name, count(*)::int,
           count(*) filter (where t.state = 'queued')::int,
           count(*) filter (where t.state = 'claimed')::int,
           count(*) filter (where t.state = 'running')::int,
           count(*) filter (where t.state = 'done')::int,
           count(*) filter (where t.state = 'failed')::int,
           count(*) filter (where t.state = 'cancelled')::int,
           format('%s of %s done', count(*) filter (where t.state = 'done'), count(*))
           || coalesce(', ' || nullif(count(*) filter (where t.state = 'failed'), 0) || ' failed', '')
           || coalesce(', ' || nullif(count(*) filter (where t.state = 'cancelled'), 0) || ' cancelled', '')
      from pgfan.task t
     where t.job_id = i_job_id
     group by t.node_name
     order by t.node_name;
$$ language sql stable security definer
set search_path = pg_catalog, pg_temp;

-- pgfan.job_summary(job_id): the job's state and progress on one line,
-- e.g. "running: 3 of 4 done" or "failed: 1 of 3 tasks failed: node2: ...".
create or replace function pgfan.job_summary(i_job_id bigint)
returns text as $$
    select j.state || ': '
           || coalesce(j.error,
                       format('%s of %s done', count(t.*) filter (where t.state = 'done'), count(t.*))
                       || coalesce(', ' || nullif(count(t.*) filter (where t.state = 'failed'), 0) || ' failed', ''))
      from pgfan.job j left join pgfan.task t on t.job_id = j.job_id
     where j.job_id = i_job_id
     group by j.job_id;
$$ language sql stable security definer
set search_path = pg_catalog, pg_temp;
