-- pgq.logutriga(), pgq.sqltriga(), pgq.jsontriga(): PgQ's change-capture triggers,
-- used as `execute procedure pgq.logutriga('queue', args...)`.
--
--   logutriga  ev_type 'I:<key columns>' / 'U:...' / 'D:...' ('R' for TRUNCATE), ev_data the
--              new row (old for DELETE) as col=val&col2=val2 (NULL: bare col); the format
--              londiste's table handlers read.
--   sqltriga   ev_type 'I'/'U'/'D' ('R'), ev_data '(cols) values (...)', 'col=val,... where
--              key=val and ...' (changed columns only) or 'key=val and ...'. Appliers
--              splice the fragments into SQL as they are, so quoting must be exactly PgQ's.
--   jsontriga  ev_type {"op":"INSERT","table":[schema,table],"pkey":[...]}, ev_data the row
--              as a JSON object (integers and booleans as JSON values, dates and timestamps
--              in JSON's ISO form, everything else as strings of the output text).
--   All: ev_extra1 'schema.table', ev_extra2 the old row with the backup argument; the
--   arguments SKIP, ignore=, pkey=, backup, when=, deny, ev_type=/ev_data=/ev_extra1..4=
--   and _pgq_ev_* columns work as in PgQ.
--
-- Each is a few lines handing the rows (as text) and the trigger's context to
-- pgq._pgfan_trigger_row, which does the work, and running the statements it asks for over
-- the typed rows (expressions; see there). logutriga and sqltriga pass the rows as jsonb
-- only when it asks for them ('J'): most rows do without, and to_jsonb costs about a
-- tenth of such a row's time. PL/pgSQL compiles a trigger function separately for every
-- table it is attached to and keeps that copy for the session, so what is compiled per
-- trigger must stay this small (tens of kB per trigger and session instead of 1.4 MB); the
-- worker is compiled once per session.
create or replace function pgq.logutriga() returns trigger as $$
declare
    v_do text;
    v_typed text[];
    v_res text[];
    v_json boolean;
begin
    loop
        v_do := pgq._pgfan_trigger_row('logu', TG_OP, TG_WHEN, TG_LEVEL, TG_RELID, TG_TABLE_SCHEMA, TG_TABLE_NAME,
                                       TG_NARGS, TG_ARGV, new::text, old::text, case when v_json then to_jsonb(new) end,
                                       case when v_json then to_jsonb(old) end, v_typed);
        exit when v_do in ('S', 'R');
        if v_do = 'J' then
            v_json := true;
        else
            execute v_do into v_res using case when TG_OP = 'DELETE' then old else new end, old;
            v_typed := v_typed || v_res;
        end if;
    end loop;
    if v_do = 'S' then
        return null;
    elsif TG_OP = 'DELETE' then
        return old;
    end if;
    return new;
end;
$$ language plpgsql;

create or replace function pgq.sqltriga() returns trigger as $$
declare
    v_do text;
    v_typed text[];
    v_res text[];
    v_json boolean;
begin
    loop
        v_do := pgq._pgfan_trigger_row('sql', TG_OP, TG_WHEN, TG_LEVEL, TG_RELID, TG_TABLE_SCHEMA, TG_TABLE_NAME,
                                       TG_NARGS, TG_ARGV, new::text, old::text, case when v_json then to_jsonb(new) end,
                                       case when v_json then to_jsonb(old) end, v_typed);
        exit when v_do in ('S', 'R');
        if v_do = 'J' then
            v_json := true;
        else
            execute v_do into v_res using case when TG_OP = 'DELETE' then old else new end, old;
            v_typed := v_typed || v_res;
        end if;
    end loop;
    if v_do = 'S' then
        return null;
    elsif TG_OP = 'DELETE' then
        return old;
    end if;
    return new;
end;
$$ language plpgsql;

create or replace function pgq.jsontriga() returns trigger as $$
declare
    v_do text;
    v_typed text[];
    v_res text[];
begin
    loop
        v_do := pgq._pgfan_trigger_row('json', TG_OP, TG_WHEN, TG_LEVEL, TG_RELID, TG_TABLE_SCHEMA, TG_TABLE_NAME,
                                       TG_NARGS, TG_ARGV, new::text, old::text, to_jsonb(new), to_jsonb(old), v_typed);
        exit when v_do in ('S', 'R');
        execute v_do into v_res using case when TG_OP = 'DELETE' then old else new end, old;
        v_typed := v_typed || v_res;
    end loop;
    if v_do = 'S' then
        return null;
    elsif TG_OP = 'DELETE' then
        return old;
    end if;
    return new;
end;
$$ language plpgsql;
