-- pgfan.check_raw_reduce(source, ev_ids, reduces): may the calling relay give these raw push
-- events' jobs this reduce?
--
-- The reducer runs a job's reduce SQL with the owner's rights (pgfan.complete_jobs), so
-- reduce SQL is owner-level code. pgfan.submit and pgfan.push_event accept it only from
-- callers trusted with those rights, and events written with pgq.insert_event come from
-- trusted producers (pgq_writer). The relay only carries the text from the event to the
-- job row; a relay login that is not the owner (pgfan_relay) could otherwise hand
-- route_event/route_events reduce SQL of its own and run it as the owner. So for such a
-- caller every reduce other than a shorthand must be the `reduce` of that very event,
-- read here from an open batch of the master queue `source`. Events of a producer
-- database ('<name>/<queue>') cannot be read from here: their reduce SQL needs a relay
-- that runs as the owner. Raises (P0001, so the relay rejects the event with this
-- message: its job fails, a dead letter keeps it) for the first event that fails.
-- Costs nothing for shorthands or the owner; otherwise one read of the open batch.
create or replace function pgfan.check_raw_reduce(
    i_source text, i_ev_ids bigint[], i_reduces text[])
returns void as $$
declare
    v_bad bigint;
begin
    if not exists (select 1 from unnest(i_reduces) r
                    where lower(btrim(coalesce(r, ''))) not in
                          ('', 'concat', 'sum', 'count', 'min', 'max', 'avg'))
       or pgfan.caller_is_owner() then
        return;
    end if;
    with wanted as (
        select u.ev_id, u.reduce
          from unnest(i_ev_ids, i_reduces) u(ev_id, reduce)
         where lower(btrim(coalesce(u.reduce, ''))) not in
               ('', 'concat', 'sum', 'count', 'min', 'max', 'avg')),
    seen as (
        select e.ev_id, e.ev_data
          from pgq.queue q
          join pgq.subscription s on s.sub_queue = q.queue_id and s.sub_batch is not null
         cross join lateral pgq.get_batch_events(s.sub_batch) e
         where q.queue_name = i_source and e.ev_id in (select w.ev_id from wanted w))
    select w.ev_id into v_bad
      from wanted w
     where not exists (
               select 1
                 from seen, regexp_split_to_table(coalesce(seen.ev_data, ''), '&') p
                where seen.ev_id = w.ev_id
                  and pgfan.form_decode(split_part(p, '=', 1)) = 'reduce'
                  and pgfan.form_decode(substr(p, length(split_part(p, '=', 1)) + 2)) = w.reduce)
     order by w.ev_id
     limit 1;
    if v_bad is not null then
        raise exception 'pgfan: role % may route only the reduce shorthands (sum, count, min, max, avg, concat): the reduce SQL of event % of % is not in an open batch of a master queue (reduce SQL from a producer database needs a relay running as pgfan''s owner)',
            session_user, v_bad, i_source;
    end if;
end;
$$ language plpgsql
set search_path = pg_catalog, pg_temp;
