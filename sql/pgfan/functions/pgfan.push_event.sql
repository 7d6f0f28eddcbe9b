-- pgfan.push_event(type, data, target): the raw push form for pgfan_producer, which has no
-- pgq.insert_event (pgq_writer may write every queue, a node's pull queue included).
--
-- The same event as pgq.insert_event('push_queue', type, data, target, null, null, null),
-- woken like pgfan's own hand-offs. The reducer runs a job's reduce SQL with the owner's
-- rights, so a `reduce` other than a shorthand is refused unless the caller is trusted with
-- them (pgfan.caller_is_owner), as in pgfan.submit, and so is `job=` (it names a job that
-- pgfan.submit made, which the relay would route or fail); keys are compared decoded, the
-- way the relay reads them. SECURITY DEFINER. Returns the event id.
create or replace function pgfan.push_event(i_type text, i_data text, i_target text)
returns bigint as $$
declare
    v_pair text;
    v_key text;
    v_reduce text;
begin
    if not pgfan.caller_is_owner() then
        foreach v_pair in array string_to_array(coalesce(i_data, ''), '&') loop
            v_key := pgfan.form_decode(split_part(v_pair, '=', 1));
            if v_key = 'job' then
                raise exception 'pgfan.push_event: job= names a job pgfan.submit made; give none'
                    using errcode = 'insufficient_privilege';
            end if;
            continue when v_key <> 'reduce';
            v_reduce := pgfan.form_decode(substr(v_pair, length(split_part(v_pair, '=', 1)) + 2));
            if lower(btrim(v_reduce)) not in ('', 'concat', 'sum', 'count', 'min', 'max', 'avg') then
                raise exception 'pgfan.push_event: role % may only use the reduce shorthands (sum, count, min, max, avg, concat)', session_user
                    using errcode = 'insufficient_privilege';
            end if;
        end loop;
    end if;
    return pgfan.enqueue('push_queue', i_type, i_data, i_target, null, null, null);
end;
$$ language plpgsql security definer
set search_path = pg_catalog, pg_temp;

-- pgfan.form_decode(text): one application/x-www-form-urlencoded key or value, decoded
-- ('+' is a space, %XX a byte; a '%' not followed by two hex digits stays as it is).
create or replace function pgfan.form_decode(i_text text)
returns text as $$
declare
    v_in text := replace(i_text, '+', ' ');
    v_out bytea := '';
    v_i integer := 1;
begin
    while v_i <= length(v_in) loop
        if substr(v_in, v_i, 1) = '%' and substr(v_in, v_i + 1, 2) ~ '^[0-9A-Fa-f]{2}$' then
            v_out := v_out || decode(substr(v_in, v_i + 1, 2), 'hex');
            v_i := v_i + 3;
        else
            v_out := v_out || convert_to(substr(v_in, v_i, 1), 'UTF8');
            v_i := v_i + 1;
        end if;
    end loop;
    return convert_from(v_out, 'UTF8');
end;
$$ language plpgsql immutable strict
set search_path = pg_catalog, pg_temp;
