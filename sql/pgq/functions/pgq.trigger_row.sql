-- pgq._pgfan_trigger_row(): the work of PgQ's change-capture triggers pgq.logutriga,
-- pgq.sqltriga and pgq.jsontriga (pgq.triggers.sql, which documents the formats) for one
-- row or TRUNCATE: parse the trigger's arguments, read the row, build the event and queue
-- it with pgq.insert_event, as the extension's C triggers do (a user who wraps or replaces
-- that function sees every trigger event).
--
-- It is a plain function with text arguments, not a trigger function (nor one taking the
-- row as a record), because PL/pgSQL compiles a function once per row type it sees and
-- keeps each copy with its plans for the session: this body as a trigger function cost
-- about 1.4 MB per trigger and session. Compiled once, it serves every table. The rows
-- come in their text form (`row::text`, split by string functions in the common case, else
-- by pgq._pgfan_trigger_fields); jsontriga's also as jsonb (p_jnew, p_jold: the JSON form
-- of dates), logutriga's and sqltriga's only when the common case returns 'J' for them
-- (it then reads most values there), and the trigger calls again with them. What needs the
-- typed rows (when= and ev_*= expressions, equality of types without an exact text form)
-- is a statement the trigger runs for it: the function returns that statement, the
-- trigger runs it with the new row (the old one for DELETE) as $1 and the old row as $2
-- and calls again with the result appended to p_typed, and the function starts over,
-- taking the results it finds in p_typed in order. Nothing is queued before the last
-- call. Returns 'S' when the trigger must return NULL (SKIP, statement triggers), 'R'
-- when it must return the row, 'J' or such a statement.
--
-- Consumers written for PgQ (londiste, python-pgq handlers, hand-written SQL appliers)
-- parse these events byte for byte, so every detail is the extension's, as observed
-- from it: argument parsing and its quirks, check order, error texts, which updates
-- count as changes, and the encodings. Values are taken through the types' output
-- functions, not casts to text, which print bool, char(n) or inet differently.
-- when= and ev_*= expressions are checked and rewritten by pgq._pgfan_trigger_expr and
-- evaluated after the event is built, with the new row (the old one for DELETE).
-- session_replication_role = local turns the triggers off; replica does not.
-- Cost per row in the common case: a few expressions, no query but pgq.insert_event's.
-- Otherwise: two catalog queries (columns and key), one query per row image, each
-- expression a PREPARE, a DEALLOCATE and its evaluation; updates of columns whose type
-- neither prints exactly nor reads back exactly (enums, composites, ...) one dynamic
-- statement more.
create or replace function pgq._pgfan_trigger_row(
    p_kind text, p_op text, p_when text, p_level text, p_relid oid, p_schema name, p_table name,
    p_nargs integer, p_argv text[], p_new text, p_old text, p_jnew jsonb, p_jold jsonb,
    p_typed text[])
returns text as $$
declare
    -- Only the common case's variables: the general code declares its own in the block
    -- below, so that a row taking the common case does not initialize them.
    v_meta text[];
    v_stamp text;
    v_skip boolean;
    v_txt text;
    v_s text;
    v_n integer;
    v_fields integer;
    v_args text[];
    v_vals text[];
    v_data text;
    v_extra2 text;
    v_id bigint;
    v_names text[];
    v_kinds text;
    v_j jsonb;
    v_split text[];
    v_val text;
    v_kind text;
    k integer;
begin
    -- 'local' means "changes that must not be replicated": do nothing at all.
    if current_setting('session_replication_role') = 'local' then
        return 'R';
    end if;

    -- The common case, INSERT and DELETE by logutriga and sqltriga and UPDATE by logutriga,
    -- with no arguments but SKIP and backup, on a table pgq._pgfan_trigger_meta found plain:
    -- no catalog query, no dynamic statement, and for most rows no loop over the columns.
    -- It must queue what the general code below queues, in the same order of checks.
    if (p_op in ('INSERT', 'DELETE') and p_kind <> 'json' or p_op = 'UPDATE' and p_kind = 'logu')
       and p_level = 'ROW' and p_nargs >= 1
       and (p_nargs = 1 or p_argv[1 : p_nargs - 1] <@ array['SKIP', 'backup']) then
        v_stamp := statement_timestamp()::text || '/' || coalesce(txid_current_if_assigned()::text, '');
        v_meta := string_to_array(current_setting('pgq_trg.r' || p_relid, true), E'\1');
        if v_meta[1] is distinct from v_stamp then
            v_meta := pgq._pgfan_trigger_meta(p_relid, v_stamp);
        end if;
    end if;
    -- An UPDATE only when the key's types print exactly: a key changed when its text did.
    if v_meta[2] = 't' and (p_op <> 'UPDATE' or v_meta[9] = 't') then
        <<common>>
        begin
            if p_op <> 'INSERT' and v_meta[3] = '' then
                raise exception 'Update/Delete on table without pkey' using errcode = 'internal_error';
            end if;
            v_skip := p_nargs > 1 and 'SKIP' = any(p_argv[1 : p_nargs - 1]);
            if v_skip and p_when = 'AFTER' then
                raise exception 'SKIP does not work in AFTER trigger.' using errcode = 'internal_error';
            end if;
            v_n := length(v_meta[4]);
            v_txt := case p_op when 'INSERT' then p_new when 'DELETE' then p_old else p_new || p_old end;

            -- Most rows' text form is split with string functions alone (a regular expression
            -- replacing or splitting costs microseconds). A field is quoted when it is empty
            -- or holds quotes, backslashes, parentheses, commas or white space, with " and \
            -- doubled inside. Without "" in the text (no empty string, no quote in a value),
            -- the quotes alternate between opening and closing a value, so removing them all
            -- and halving the backslashes leaves the values separated by commas, NULL as
            -- nothing, once commas inside quotes are told apart (as 0x02, a comma again in
            -- the event). The bytes 0x01 and 0x02 are then free as markers. An UPDATE splits
            -- both rows at once, the new one first. With the jsonb passed, this has failed.
            if p_jnew is null and p_jold is null and strpos(v_txt, '""') = 0 and strpos(v_txt, E'\1') = 0 then
                if p_op = 'UPDATE' then
                    v_s := substr(p_new, 2, length(p_new) - 2) || ',' || substr(p_old, 2, length(p_old) - 2);
                    v_fields := 2 * v_n;
                else
                    v_s := substr(v_txt, 2, length(v_txt) - 2);
                    v_fields := v_n;
                end if;
                if length(v_s) - length(replace(v_s, ',', '')) >= v_fields and strpos(v_txt, E'\2') = 0 then
                    -- more commas than separators
                    v_split := string_to_array(v_s, '"');
                    for i in 2 .. array_length(v_split, 1) by 2 loop
                        v_split[i] := replace(v_split[i], ',', E'\2');
                    end loop;
                    v_s := array_to_string(v_split, '');
                end if;
                -- (E'' strings read the same whatever standard_conforming_strings says)
                v_s := replace(replace(v_s, '"', ''), E'\\\\', E'\\');
                if p_kind = 'logu' then
                    -- urlencoded all at once (the separating commas become %2c unless the
                    -- common characters allow replacements instead); each value then
                    -- '=value', a NULL '=' read as NULL, which format() prints as nothing
                    v_args := string_to_array(
                        '=' || case when v_s ~ E'^[-._0-9A-Za-z :+,\2]*$'
                                    then replace(replace(replace(replace(replace(v_s, '+', '%2b'), ':', '%3a'), ' ', '+'), ',', ',='),
                                                 E'\2', '%2c')
                                    else replace(replace(pgq._pgfan_urlencode(v_s), '%2c', ',='), '%02', '%2c') end,
                        ',', '=');
                    if array_length(v_args, 1) = v_fields then
                        if p_op = 'UPDATE' then
                            -- the same encoding of the same text is the same value
                            foreach k in array v_meta[8]::integer[] loop
                                if v_args[k] is distinct from v_args[v_n + k] then
                                    raise exception 'primary key update not allowed' using errcode = 'internal_error';
                                end if;
                            end loop;
                            if 'backup' = any(p_argv[1 : p_nargs - 1]) then
                                v_extra2 := format(v_meta[6], variadic v_args[v_n + 1 :]);
                            end if;
                        end if;
                        -- (format() leaves an UPDATE's old row, the arguments after the
                        -- first v_n, unused)
                        v_data := format(v_meta[6], variadic v_args);
                    end if;
                elsif p_op = 'INSERT' then
                    -- quote_literal of each value: quotes doubled, and without backslashes
                    -- no E'' form; NULL (the marker) null
                    if strpos(v_s, E'\\') = 0 then
                        v_args := string_to_array(replace(v_s, '''', ''''''), ',', '');
                        if array_length(v_args, 1) = v_n then
                            v_data := v_meta[7]
                                      || replace(replace('''' || array_to_string(v_args, ''',''', E'\1') || '''', E'''\1''', 'null'),
                                                 E'\2', ',')
                                      || ')';
                        end if;
                    end if;
                else
                    v_vals := string_to_array(v_s, ',', '');
                    if array_length(v_vals, 1) is distinct from v_n then
                        v_vals := null;
                    elsif strpos(v_s, E'\2') > 0 then
                        foreach k in array v_meta[8]::integer[] loop
                            v_vals[k] := replace(v_vals[k], E'\2', ',');
                        end loop;
                    end if;
                end if;
            end if;
            -- other UPDATEs: the general code
            exit common when p_op = 'UPDATE' and v_data is null;

            -- The other rows: the values from the row as jsonb, where that gives the type's
            -- output text, else from the row's text form, split by a query. The trigger
            -- passes the jsonb only when asked to ('J'): building it for every row would
            -- cost the rows above about a tenth of their time.
            if v_data is null and v_vals is null then
                v_j := case when p_op = 'INSERT' then p_jnew else p_jold end;
                if v_j is null then
                    return 'J';
                end if;
                v_names := v_meta[5];
                v_kinds := v_meta[4];
                v_vals := '{}';
                for c in 1 .. v_n loop
                    v_val := v_j ->> v_names[c];
                    v_kind := substr(v_kinds, c, 1);
                    if v_kind = 'r' then
                        -- the text form (also for json nulls, which ->> reads as NULL)
                        v_split := coalesce(v_split, pgq._pgfan_trigger_fields(v_txt, v_n));
                        v_val := v_split[c];
                    elsif v_val is null or v_kind = 'j' then
                        null;
                    elsif v_kind = 'b' then
                        v_val := case v_val when 'true' then 't' else 'f' end;
                    elsif v_kind = 'z' then
                        v_val := v_val::timestamptz::text;
                    elsif v_kind = 't' then
                        v_val := v_val::timestamp::text;
                    elsif v_kind = 'd' then
                        v_val := v_val::date::text;
                    elsif v_kind in ('f', 'g') and v_val <> '0' then
                        v_val := case v_kind when 'f' then v_val::float4::text else v_val::float8::text end;
                    else
                        -- a float zero: jsonb drops the sign of -0
                        v_split := coalesce(v_split, pgq._pgfan_trigger_fields(v_txt, v_n));
                        v_val := v_split[c];
                    end if;
                    v_vals[c] := v_val;
                end loop;
                if p_kind = 'logu' then
                    v_args := '{}';
                    for c in 1 .. v_n loop
                        v_val := v_vals[c];
                        v_args[c] := case when v_val is null then ''
                                          when v_val ~ '^[-._0-9A-Za-z]*$' then '=' || v_val
                                          -- names, times: spaces, colons, signs
                                          when v_val ~ '^[-._0-9A-Za-z :+]*$' then
                                              '=' || replace(replace(replace(v_val, '+', '%2b'), ':', '%3a'), ' ', '+')
                                          else '=' || pgq._pgfan_urlencode(v_val) end;
                    end loop;
                    v_data := format(v_meta[6], variadic v_args);
                elsif p_op = 'INSERT' then
                    v_data := v_meta[7];
                    for c in 1 .. v_n loop
                        v_data := v_data || case when c > 1 then ',' else '' end || coalesce(quote_literal(v_vals[c]), 'null');
                    end loop;
                    v_data := v_data || ')';
                end if;
            end if;

            if v_data is null then
                -- sqltriga's DELETE: the key
                v_names := v_meta[5];
                foreach k in array v_meta[8]::integer[] loop
                    if v_vals[k] is null then
                        raise exception 'logtriga: Unexpected NULL key value' using errcode = 'internal_error';
                    end if;
                    v_data := coalesce(v_data || ' and ', '') || quote_ident(v_names[k]) || '=' || quote_literal(v_vals[k]);
                end loop;
            end if;
            -- an assignment, not PERFORM: a simple expression skips the executor
            v_id := pgq.insert_event(p_argv[0],
                                     case when p_kind = 'sql' then left(p_op, 1) else left(p_op, 1) || ':' || v_meta[3] end,
                                     v_data, p_schema || '.' || p_table, v_extra2, null, null);
            return case when v_skip then 'S' else 'R' end;
        end;
    end if;

    -- The general code.
    declare
        v_queue text;
        v_table text := p_schema || '.' || p_table;
        v_arg text;
        v_key text;
        v_skip boolean := false;
        v_backup boolean := false;
        v_deny boolean := false;
        v_ignore text;                  -- NULL when no ignore= was given
        v_pkey text;                    -- the key columns as a comma list
        v_custom_pkey boolean := false;
        v_pkey_names text[];
        -- expressions, in evaluation order: ev_type, ev_data, ev_extra1..4, when
        v_expr text[] := array[null, null, null, null, null, null, null]::text[];
        v_fields constant text[] := array['ev_type', 'ev_data', 'ev_extra1', 'ev_extra2',
                                          'ev_extra3', 'ev_extra4', 'when'];
        v_names text[];
        v_types oid[];
        v_key_col boolean[] := '{}';
        v_ign_col boolean[] := '{}';
        v_magic_col boolean[] := '{}';
        v_eq_changed boolean[];
        v_is_array boolean;
        v_eq_cols integer[] := '{}';
        v_efd boolean;
        v_changed boolean[];
        v_new text[];
        v_old text[];
        v_vals text[];
        v_ti integer := 0;              -- the results of p_typed taken so far
        v_sql text;
        v_list text;
        v_off integer;
        v_pos integer;
        v_hit boolean;
        v_n_changed integer := 0;
        v_n_ignored integer := 0;
        v_set text;
        v_where text;
        v_ev text[] := array[null, null, null, null, null, null]::text[];
        v_cnt bigint;
        v_typ oid;
        v_res text;
        v_emit boolean;
        v_enc text := current_setting('server_encoding');
        v_replident "char";
        -- urlencoding
        v_src text;
        v_toks text[];
        v_tkinds text[];
        v_e boolean;
        j integer;
    begin
        if p_level <> 'ROW' and p_op <> 'TRUNCATE' then
            raise exception 'pgq Ins/Upd/Del trigger must be fired FOR EACH ROW' using errcode = 'internal_error';
        end if;
        if p_nargs < 1 then
            raise exception 'pgq trigger must have destination queue as argument' using errcode = 'internal_error';
        end if;
        v_queue := p_argv[0];

        -- The table's columns and primary key, read for every row: a cache in the session would
        -- need an invalidation that SQL cannot see (a renamed column or a new key). With the
        -- default replica identity the relation cache names the key's index, which is cheaper
        -- than looking for it among the table's indexes.
        select coalesce(array_agg(a.attname::text order by a.attnum), '{}'),
               coalesce(array_agg(a.atttypid order by a.attnum), '{}'),
               (select c.relreplident from pg_catalog.pg_class c where c.oid = p_relid),
               (select coalesce(array_agg(p.attname::text order by ks.n), '{}')
                  from pg_catalog.pg_index x
                 cross join lateral unnest(x.indkey::int2[]) with ordinality ks(attnum, n)
                  join pg_catalog.pg_attribute p on p.attrelid = x.indrelid and p.attnum = ks.attnum
                 where x.indexrelid = pg_catalog.pg_get_replica_identity_index(p_relid) and x.indisprimary)
          into v_names, v_types, v_replident, v_pkey_names
          from pg_catalog.pg_attribute a
         where a.attrelid = p_relid and a.attnum > 0 and not a.attisdropped;
        if v_replident <> 'd' or v_pkey_names is null then
            select coalesce(array_agg(p.attname::text order by ks.n), '{}')
              into v_pkey_names
              from pg_catalog.pg_index x
             cross join lateral unnest(x.indkey::int2[]) with ordinality ks(attnum, n)
              join pg_catalog.pg_attribute p on p.attrelid = x.indrelid and p.attnum = ks.attnum
             where x.indrelid = p_relid and x.indisprimary;
        end if;

        -- Arguments, in order. The first ignore= and pkey= lose to later ones, the first
        -- expression for a field wins and later ones for it are not even looked at.
        for a in 1 .. p_nargs - 1 loop
            v_arg := p_argv[a];
            v_key := case when strpos(v_arg, '=') > 0 then left(v_arg, strpos(v_arg, '=') - 1) end;
            if v_arg = 'SKIP' then
                v_skip := true;
            elsif v_arg = 'backup' then
                v_backup := true;
            elsif v_arg = 'deny' then
                v_deny := true;
            elsif v_key = 'ignore' then
                v_ignore := substr(v_arg, 8);
            elsif v_key = 'pkey' then
                v_pkey := substr(v_arg, 6);
                v_custom_pkey := true;
            elsif v_key = any(v_fields) then
                if p_op = 'TRUNCATE' then
                    raise exception 'Custom expressions do not make sense for truncater trigger' using errcode = 'internal_error';
                end if;
                k := array_position(v_fields, v_key);
                continue when v_expr[k] is not null;
                -- The expression is SQL over the row's columns, written as bare case-sensitive
                -- names. Like the extension, split it into SQL tokens, number the columns it
                -- uses ($1, $2, ... by first use) and prepare "select <expr>" with them, so
                -- broken expressions fail here, with the extension's messages. It is evaluated
                -- later with the columns as fields of the row parameter.
                v_expr[k] := pgq._pgfan_trigger_expr(substr(v_arg, length(v_key) + 2), v_names, v_types);
            else
                raise exception 'bad param to pgq trigger' using errcode = 'internal_error';
            end if;
        end loop;

        if p_op = 'TRUNCATE' then
            if v_ignore is not null then
                raise exception 'Column ignore does not make sense for truncate trigger' using errcode = 'internal_error';
            elsif v_custom_pkey then
                raise exception 'Custom pkey_list does not make sense for truncate trigger' using errcode = 'internal_error';
            elsif v_backup then
                raise exception 'Backup does not make sense for truncate trigger' using errcode = 'internal_error';
            end if;
        end if;

        if v_custom_pkey then
            v_pkey_names := regexp_split_to_array(v_pkey, ',');
        else
            v_pkey := array_to_string(v_pkey_names, ',');
        end if;

        if p_op in ('UPDATE', 'DELETE') and v_pkey = '' then
            raise exception 'Update/Delete on table without pkey' using errcode = 'internal_error';
        end if;
        if v_skip and p_when = 'AFTER' then
            raise exception 'SKIP does not work in AFTER trigger.' using errcode = 'internal_error';
        end if;
        if v_deny then
            raise exception 'Table ''%'' to queue ''%'': change not allowed (%)', v_table, v_queue, p_op
                using errcode = 'internal_error';
        end if;

        if p_op = 'TRUNCATE' then
            if p_kind = 'json' then
                v_ev[1] := '{"op":"TRUNCATE","table":[' || to_json(p_schema::text) || ','
                           || to_json(p_table::text) || '],"pkey":['
                           || coalesce((select string_agg(to_json(p)::text, ',') from unnest(v_pkey_names) p), '')
                           || ']}';
                v_ev[2] := '{}';
            else
                v_ev[1] := 'R';
                v_ev[2] := '';
            end if;
            v_ev[3] := v_table;
            perform pgq.insert_event(v_queue, v_ev[1], v_ev[2], v_ev[3], v_ev[4], v_ev[5], v_ev[6]);
            return 'S';
        end if;

        -- Per column: key (named in the key list), ignored (named in ignore=), magic
        -- (_pgq_ev_*). A name is in a list when it appears there between commas or
        -- whitespace (or the list's ends).
        -- (Without whitespace in the list and separators in the name, that is equality with
        -- one of the list's comma-separated items.)
        for c in 1 .. coalesce(array_length(v_names, 1), 0) loop
            for l in 1 .. 2 loop
                v_list := case l when 1 then v_pkey else v_ignore end;
                v_hit := false;
                if v_list is null then
                    null;
                elsif v_list !~ '[[:space:]]' and v_names[c] !~ '[,[:space:]]' then
                    v_hit := v_names[c] = any(string_to_array(v_list, ','));
                else
                    v_off := 0;
                    loop
                        v_pos := strpos(substr(v_list, v_off + 1), v_names[c]);
                        exit when v_pos = 0;
                        v_pos := v_pos + v_off;
                        if (v_pos = 1 or substr(v_list, v_pos - 1, 1) ~ '^[,[:space:]]$')
                           and substr(v_list, v_pos + length(v_names[c]), 1) ~ '^[,[:space:]]?$' then
                            v_hit := true;
                            exit;
                        end if;
                        v_off := v_pos;
                    end loop;
                end if;
                if l = 1 then
                    v_key_col[c] := v_hit;
                else
                    v_ign_col[c] := v_hit;
                end if;
            end loop;
            v_magic_col[c] := left(v_names[c], 8) = '_pgq_ev_';
        end loop;

        -- The row images as text, every column through its type's output function: the
        -- record's own text form split into its fields, a static query instead of a dynamic
        -- statement per row (which would be planned each time). jsontriga writes dates and
        -- timestamps the way JSON does.
        if p_op in ('INSERT', 'UPDATE') then
            v_new := pgq._pgfan_trigger_fields(p_new, coalesce(array_length(v_names, 1), 0));
            v_vals := v_new;
        end if;
        if p_op in ('UPDATE', 'DELETE') then
            v_old := pgq._pgfan_trigger_fields(p_old, coalesce(array_length(v_names, 1), 0));
        end if;
        if p_op = 'DELETE' then
            v_vals := v_old;
        end if;
        if p_kind = 'json' then
            for c in 1 .. coalesce(array_length(v_names, 1), 0) loop
                continue when v_types[c] not in (1082, 1114, 1184) or v_magic_col[c];
                if v_new[c] is not null then
                    v_new[c] := (p_jnew -> v_names[c])::text;
                end if;
                if v_old[c] is not null then
                    v_old[c] := (p_jold -> v_names[c])::text;
                end if;
            end loop;
            v_vals := case when p_op = 'DELETE' then v_old else v_new end;
        end if;

        -- Which columns an UPDATE changed: for types with a default equality (a btree or
        -- hash opclass, directly or through a binary-coercible cast; for domains and
        -- composites every type inside) "not equal", for the others "prints differently".
        -- Arrays, also under domains, count as having none (as in the extension), but inside
        -- composites their elements' equality counts. Equal output implies equal values,
        -- except for floats printed with extra_float_digits < 1, so only columns that print
        -- differently (or such floats) are looked at, and the types whose output is exact
        -- (integers, text, timestamps, ...) need no equality at all.
        if p_op = 'UPDATE' then
            v_changed := '{}';
            v_sql := null;
            v_efd := current_setting('extra_float_digits')::integer < 1;
            for c in 1 .. coalesce(array_length(v_names, 1), 0) loop
                v_changed[c] := v_new[c] is distinct from v_old[c];
                continue when not (v_changed[c] or (v_efd and v_types[c] in (700, 701)))
                              or v_types[c] in (16, 17, 18, 19, 20, 21, 23, 25, 26, 1043, 1082, 1083, 1114, 1184, 2950);
                if v_types[c] in (1042, 1186, 1266, 1700, 3802) or (v_types[c] in (700, 701) and not v_efd) then
                    -- Output that reads back exactly: compare the values read back, without a
                    -- dynamic statement.
                    v_changed[c] := case v_types[c]
                        when 700 then v_new[c]::float4 is distinct from v_old[c]::float4
                        when 701 then v_new[c]::float8 is distinct from v_old[c]::float8
                        when 1042 then v_new[c]::bpchar is distinct from v_old[c]::bpchar
                        when 1186 then v_new[c]::interval is distinct from v_old[c]::interval
                        when 1266 then v_new[c]::timetz is distinct from v_old[c]::timetz
                        when 1700 then v_new[c]::numeric is distinct from v_old[c]::numeric
                        else v_new[c]::jsonb is distinct from v_old[c]::jsonb end;
                    continue;
                elsif v_types[c] in (700, 701) then
                    v_e := true;
                else
                    select case when y.typtype in ('e', 'r', 'm') then true
                                when y.typelem <> 0 and y.typcategory = 'A' then false
                                when y.typtype = 'b' then
                                    exists (select 1 from pg_catalog.pg_opclass o
                                             where o.opcintype = y.oid and o.opcdefault and o.opcmethod in (403, 405))
                                    or exists (select 1 from pg_catalog.pg_cast ca
                                                 join pg_catalog.pg_opclass o on o.opcintype = ca.casttarget
                                                where ca.castsource = y.oid and ca.castmethod = 'b'
                                                  and o.opcdefault and o.opcmethod in (403, 405))
                           end
                      into v_e
                      from pg_catalog.pg_type y where y.oid = v_types[c];
                    if v_e is null then
                        -- a domain or composite: unless a domain of an array, every type
                        -- inside needs an equality
                        v_typ := v_types[c];
                        loop
                            select y.typbasetype, y.typtype = 'd', y.typelem <> 0 and y.typcategory = 'A'
                              into v_typ, v_hit, v_is_array
                              from pg_catalog.pg_type y where y.oid = v_typ;
                            exit when not v_hit;
                        end loop;
                        v_e := false;
                        if not v_is_array then
                            with recursive r(t) as (
                                select v_types[c]
                                union
                                select x.t
                                  from r join pg_catalog.pg_type z on z.oid = r.t
                                 cross join lateral (
                                     select z.typbasetype where z.typtype = 'd'
                                     union all
                                     select z.typelem where z.typelem <> 0 and z.typcategory = 'A'
                                     union all
                                     select f.atttypid from pg_catalog.pg_attribute f
                                      where z.typtype = 'c' and f.attrelid = z.typrelid
                                        and f.attnum > 0 and not f.attisdropped
                                 ) x(t)
                            )
                            select bool_and(
                                       z.typtype in ('d', 'c', 'e', 'r', 'm')
                                       or (z.typelem <> 0 and z.typcategory = 'A')
                                       or exists (select 1 from pg_catalog.pg_opclass o
                                                   where o.opcintype = z.oid and o.opcdefault and o.opcmethod in (403, 405))
                                       or exists (select 1 from pg_catalog.pg_cast ca
                                                    join pg_catalog.pg_opclass o on o.opcintype = ca.casttarget
                                                   where ca.castsource = z.oid and ca.castmethod = 'b'
                                                     and o.opcdefault and o.opcmethod in (403, 405)))
                              into v_e
                              from r join pg_catalog.pg_type z on z.oid = r.t;
                        end if;
                    end if;
                end if;
                continue when not v_e;
                v_eq_cols := v_eq_cols || c;
                v_sql := coalesce(v_sql || ', ', '') || '($1).' || quote_ident(v_names[c])
                         || ' is distinct from ($2).' || quote_ident(v_names[c]);
            end loop;
            if v_sql is not null then
                if coalesce(array_length(p_typed, 1), 0) <= v_ti then
                    return 'select array[' || v_sql || ']::text[]';
                end if;
                v_eq_changed := p_typed[v_ti + 1 : v_ti + array_length(v_eq_cols, 1)]::boolean[];
                v_ti := v_ti + array_length(v_eq_cols, 1);
                for c in 1 .. array_length(v_eq_cols, 1) loop
                    v_changed[v_eq_cols[c]] := v_eq_changed[c];
                end loop;
            end if;
        end if;

        -- Is this update worth an event? Key columns must not change. With ignore=, an
        -- update that changed only ignored (or magic) columns is not; sqltriga also drops
        -- updates whose only changes are in magic columns, as its SQL would be empty.
        v_emit := true;
        v_set := null;
        if p_op = 'UPDATE' then
            for c in 1 .. coalesce(array_length(v_names, 1), 0) loop
                continue when not v_changed[c];
                if v_key_col[c] then
                    raise exception 'primary key update not allowed' using errcode = 'internal_error';
                end if;
                if v_ign_col[c] or v_magic_col[c] then
                    v_n_ignored := v_n_ignored + 1;
                else
                    v_n_changed := v_n_changed + 1;
                    v_set := coalesce(v_set || ',', '') || quote_ident(v_names[c]) || '='
                             || coalesce(quote_literal(v_new[c]), 'NULL');
                end if;
            end loop;
            if p_kind = 'sql' then
                v_emit := v_n_changed > 0 or v_n_ignored = 0;
            else
                v_emit := v_ignore is null or v_n_changed > 0 or v_n_ignored = 0;
            end if;
        end if;

        if v_emit then
            if p_kind = 'sql' and p_op <> 'INSERT' then
                if p_op = 'UPDATE' and v_set is null then
                    -- nothing to set: set the first key column to itself
                    k := array_position(v_key_col, true);
                    if k is null or v_old[k] is null then
                        raise exception 'logtriga: Unexpected NULL key value' using errcode = 'internal_error';
                    end if;
                    v_set := quote_ident(v_names[k]) || '=' || quote_literal(v_old[k]);
                end if;
                v_where := null;
                for c in 1 .. coalesce(array_length(v_names, 1), 0) loop
                    continue when not v_key_col[c];
                    if v_old[c] is null then
                        raise exception 'logtriga: Unexpected NULL key value' using errcode = 'internal_error';
                    end if;
                    v_where := coalesce(v_where || ' and ', '') || quote_ident(v_names[c]) || '=' || quote_literal(v_old[c]);
                end loop;
                v_where := coalesce(v_where, '');
            end if;

            v_ev[3] := v_table;
            if p_kind = 'logu' then
                v_ev[1] := left(p_op, 1) || ':' || v_pkey;
            elsif p_kind = 'sql' then
                v_ev[1] := left(p_op, 1);
                if p_op = 'INSERT' then
                    select '(' || coalesce(string_agg(quote_ident(u.n), ',' order by u.i), '') || ') values ('
                           || coalesce(string_agg(coalesce(quote_literal(u.v), 'null'), ',' order by u.i), '') || ')'
                      into v_res
                      from unnest(v_names, v_vals, v_ign_col, v_magic_col) with ordinality u(n, v, ig, mg, i)
                     where not u.ig and not u.mg;
                    v_ev[2] := v_res;
                elsif p_op = 'UPDATE' then
                    v_ev[2] := v_set || ' where ' || v_where;
                else
                    v_ev[2] := v_where;
                end if;
            else
                v_ev[1] := '{"op":' || to_json(p_op::text) || ',"table":[' || to_json(p_schema::text) || ','
                           || to_json(p_table::text) || '],"pkey":['
                           || coalesce((select string_agg(to_json(p)::text, ',') from unnest(v_pkey_names) p), '')
                           || ']}';
            end if;
            -- ev_data (logutriga, jsontriga) and, with backup, the old row in ev_extra2
            for r in 1 .. case when v_backup and p_op = 'UPDATE' then 2 else 1 end loop
                continue when p_kind = 'sql' and r = 1;
                v_vals := case when r = 2 or p_op = 'DELETE' then v_old else v_new end;
                v_res := '';
                for c in 1 .. coalesce(array_length(v_names, 1), 0) loop
                    continue when v_ign_col[c] or v_magic_col[c];
                    if p_kind = 'json' then
                        v_res := v_res || case when v_res = '' then '' else ',' end || to_json(v_names[c]) || ':'
                                 || case when v_vals[c] is null then 'null'
                                         when v_types[c] in (20, 21, 23, 1082, 1114, 1184) then v_vals[c]
                                         when v_types[c] = 16 then case v_vals[c] when 't' then 'true' else 'false' end
                                         else to_json(v_vals[c])::text end;
                        continue;
                    end if;
                    -- urlencoded: unreserved characters stay, space is '+', other bytes %xx
                    for h in 1 .. 2 loop
                        v_src := case h when 1 then v_names[c] else v_vals[c] end;
                        if h = 2 then
                            exit when v_src is null;
                            v_res := v_res || '=';
                        elsif v_res <> '' then
                            v_res := v_res || '&';
                        end if;
                        if v_src ~ '^[-._0-9A-Za-z]*$' then
                            v_res := v_res || v_src;
                            continue;
                        end if;
                        -- safe runs, and the unsafe runs between them
                        v_toks := regexp_split_to_array(v_src, '[^-._0-9A-Za-z]+');
                        v_tkinds := regexp_split_to_array(v_src, '[-._0-9A-Za-z]+');
                        j := case when v_tkinds[1] = '' then 1 else 0 end;
                        for t in 1 .. array_length(v_toks, 1) loop
                            v_res := v_res || v_toks[t];
                            continue when t = array_length(v_toks, 1);
                            v_res := v_res || replace(regexp_replace(encode(convert_to(v_tkinds[t + j], v_enc), 'hex'),
                                                                     '(..)', '%\1', 'g'), '%20', '+');
                        end loop;
                    end loop;
                end loop;
                if p_kind = 'json' then
                    v_res := '{' || v_res || '}';
                end if;
                v_ev[case r when 1 then 2 else 4 end] := v_res;
            end loop;

            -- deprecated: _pgq_ev_* columns set the event fields
            v_vals := case when p_op = 'DELETE' then v_old else v_new end;
            for c in 1 .. coalesce(array_length(v_names, 1), 0) loop
                continue when not v_magic_col[c];
                k := array_position(array['_pgq_ev_type', '_pgq_ev_data', '_pgq_ev_extra1', '_pgq_ev_extra2',
                                          '_pgq_ev_extra3', '_pgq_ev_extra4'], v_names[c]);
                if k is null then
                    raise exception 'Unknown magic column: %', v_names[c] using errcode = 'internal_error';
                end if;
                v_ev[k] := v_vals[c];
            end loop;

            -- expressions: ev_* overrides first, then when=
            for e in 1 .. 7 loop
                continue when v_expr[e] is null;
                if v_expr[e] = '' then
                    v_cnt := 1;
                    v_typ := 0;
                    v_res := null;
                else
                    if coalesce(array_length(p_typed, 1), 0) <= v_ti then
                        return 'select array[count(*)::text, (array_agg(pg_typeof(s.x)::oid))[1]::text, '
                               || '(array_agg(case when num_nulls(s.x) = 0 then format(''%s'', s.x) end))[1]] '
                               || 'from (select ' || v_expr[e] || E'\n) s(x)';
                    end if;
                    v_cnt := p_typed[v_ti + 1];
                    v_typ := p_typed[v_ti + 2];
                    v_res := p_typed[v_ti + 3];
                    v_ti := v_ti + 3;
                    if v_cnt <> 1 then
                        raise exception 'Expect 1 row from override query, got %', v_cnt using errcode = 'internal_error';
                    end if;
                end if;
                if e < 7 then
                    v_ev[e] := v_res;
                elsif v_typ <> 16 then
                    raise exception 'when= query result must be boolean, got=%', v_typ using errcode = 'internal_error';
                elsif v_res is null then
                    raise exception 'when= should not be NULL' using errcode = 'internal_error';
                else
                    v_emit := v_res = 't';
                end if;
            end loop;

            if v_emit then
                perform pgq.insert_event(v_queue, v_ev[1], v_ev[2], v_ev[3], v_ev[4], v_ev[5], v_ev[6]);
            end if;
        end if;

        return case when v_skip then 'S' else 'R' end;
    end;
end;
$$ language plpgsql;

do $grant$
begin
    if exists (select 1 from pg_catalog.pg_roles where rolname = 'pgq_writer') then
        grant execute on function pgq._pgfan_trigger_row(text, text, text, text, oid, name, name, integer, text[], text, text, jsonb, jsonb, text[])
            to pgq_writer;
    end if;
end
$grant$;
