-- pgfan.submit(target, sql | call + args, reduce, lane, timeout, tx, policy): start a job.
--
-- The job row and its push event are written in the caller's transaction, so the job
-- exists and starts only if the caller commits. Mistakes that can be seen now (no
-- statement, an unknown node, a bad policy) raise at once instead of failing later.
-- Named arguments read well: pgfan.submit('all', 'select count(*) from t', reduce => 'sum').
-- Returns the job id, for pgfan.wait / pgfan.result / pgfan.job_status.
--
-- SECURITY DEFINER, so that pgfan_producer needs no rights on pgfan's tables or queues.
-- The reducer runs a job's reduce SQL with its own (the owner's) rights, so SQL there is
-- accepted only from callers trusted with those rights (pgfan.caller_is_owner); other
-- producers use the shorthands (pgfan.reduce_sql). The job records the login role.
create or replace function pgfan.submit(
    target text,
    sql text default null,
    reduce text default null,
    lane text default null,
    timeout interval default null,
    tx boolean default true,
    policy text default 'all',
    call text default null,
    args text[] default null,
    parallel integer default null,
    sqls text[] default null)
returns bigint as $$
declare
    v_kind text;
    v_params jsonb;
    v_job bigint;
    v_sqls text[] := coalesce(submit.sqls, '{}') || case when submit.sql is null then '{}'::text[]
                                                         else array[submit.sql] end;
begin
    if cardinality(v_sqls) > 0 and submit.call is not null then
        raise exception 'pgfan.submit: give sql or call, not both';
    elsif submit.call is not null then
        v_kind := 'call';
        v_params := jsonb_build_object('fn', jsonb_build_array(submit.call),
                                       'arg', to_jsonb(coalesce(submit.args, '{}')));
    elsif cardinality(v_sqls) > 0 then
        v_kind := 'sql';
        v_params := jsonb_build_object('sql', to_jsonb(v_sqls));
    else
        raise exception 'pgfan.submit: nothing to run (give sql or call)';
    end if;
    if submit.policy is null or submit.policy !~ '^(all|failfast|k:[1-9][0-9]{0,8})$' then
        raise exception 'pgfan.submit: policy must be all, failfast or k:<n>, not %', submit.policy;
    end if;
    if submit.reduce is not null
       and lower(btrim(submit.reduce)) not in ('', 'concat', 'sum', 'count', 'min', 'max', 'avg')
       and not pgfan.caller_is_owner() then
        raise exception 'pgfan.submit: role % may only use the reduce shorthands (sum, count, min, max, avg, concat)', session_user
            using errcode = 'insufficient_privilege';
    end if;
    perform pgfan.resolve_target(submit.target);
    v_params := v_params
        || jsonb_strip_nulls(jsonb_build_object(
               'lane', case when submit.lane is not null then jsonb_build_array(submit.lane) end,
               'timeout', case when submit.timeout is not null
                               then jsonb_build_array((extract(epoch from submit.timeout) * 1000)::bigint || 'ms') end,
               'tx', case when not submit.tx then jsonb_build_array('0') end,
               'parallel', case when submit.parallel is not null
                                then jsonb_build_array(submit.parallel::text) end));
    insert into pgfan.job (kind, target, params, reduce, policy, deadline, submitted_by)
    values (v_kind, submit.target, v_params, submit.reduce, submit.policy, now() + submit.timeout,
            session_user)
    returning job_id into v_job;
    perform pgfan.enqueue('push_queue', v_kind, 'job=' || v_job, submit.target, null, null, null);
    return v_job;
end;
$$ language plpgsql security definer
set search_path = pg_catalog, pg_temp;
