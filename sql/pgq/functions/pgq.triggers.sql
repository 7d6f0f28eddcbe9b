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
--   All: ev_extra1 'schema.table', ev_extra2 the old row with the backup argument.
--
-- Consumers written for PgQ (londiste, python-pgq handlers, hand-written SQL appliers)
-- parse these events byte for byte, so every detail is the extension's, as observed
-- from it: argument parsing and its quirks, check order, error texts, which updates
-- count as changes, and the encodings. Values are taken through the types' output
-- functions (format('%s')), not casts to text, which print bool, char(n) or inet
-- differently.
--
-- The three functions are made from one body that differs only in c_kind: a helper
-- function would be an object the extension does not have, and one body keeps every fix
-- in all three.
-- The table's columns are only known at run time, so each row is read with one dynamic
-- statement. when= and ev_*= expressions name the row's columns bare and
-- case-sensitively; they are rewritten into fields of the row parameter, parsed at once
-- (PREPARE), like the extension prepares them, and evaluated after the event is built,
-- with the new row (the old one for DELETE).
-- session_replication_role = local turns the triggers off; replica does not.
-- Cost: PL/pgSQL compiles a trigger function once per trigger and session and keeps it
-- (about 1.4 MB with its plans, measured; see README); rows take one catalog query and one dynamic statement,
-- updates of types without exact text output one more, each expression a PREPARE, a
-- DEALLOCATE and its evaluation.
do $install$
declare
    v_body constant text := $trigger$
declare
    -- Replaced per function by the installer at the end of this file.
    c_kind constant text := '@KIND@';
    v_queue text;
    v_table text := TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME;
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
    v_row record;
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
    -- expression tokenizer state
    v_src text;
    v_out text;
    v_tok text;
    v_ch text;
    v_nx text;
    v_len integer;
    v_toks text[];
    v_tkinds text[];
    v_tkind text;
    v_used text[];
    v_estr integer;
    v_depth integer;
    v_e boolean;
    i integer;
    j integer;
    k integer;
begin
    -- 'local' means "changes that must not be replicated": do nothing at all.
    if current_setting('session_replication_role') = 'local' then
        if TG_LEVEL = 'ROW' then
            if TG_OP = 'DELETE' then
                return old;
            end if;
            return new;
        end if;
        return null;
    end if;

    if TG_LEVEL <> 'ROW' and TG_OP <> 'TRUNCATE' then
        raise exception 'pgq Ins/Upd/Del trigger must be fired FOR EACH ROW' using errcode = 'internal_error';
    end if;
    if TG_NARGS < 1 then
        raise exception 'pgq trigger must have destination queue as argument' using errcode = 'internal_error';
    end if;
    v_queue := TG_ARGV[0];

    -- the table's columns and primary key
    select coalesce(array_agg(a.attname::text order by a.attnum), '{}'),
           coalesce(array_agg(a.atttypid order by a.attnum), '{}'),
           (select coalesce(array_agg(p.attname::text order by ks.n), '{}')
              from pg_catalog.pg_index x
             cross join lateral unnest(x.indkey::int2[]) with ordinality ks(attnum, n)
              join pg_catalog.pg_attribute p on p.attrelid = x.indrelid and p.attnum = ks.attnum
             where x.indrelid = TG_RELID and x.indisprimary)
      into v_names, v_types, v_pkey_names
      from pg_catalog.pg_attribute a
     where a.attrelid = TG_RELID and a.attnum > 0 and not a.attisdropped;

    -- Arguments, in order. The first ignore= and pkey= lose to later ones, the first
    -- expression for a field wins and later ones for it are not even looked at.
    for a in 1 .. TG_NARGS - 1 loop
        v_arg := TG_ARGV[a];
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
            if TG_OP = 'TRUNCATE' then
                raise exception 'Custom expressions do not make sense for truncater trigger' using errcode = 'internal_error';
            end if;
            k := array_position(v_fields, v_key);
            continue when v_expr[k] is not null;
            -- The expression is SQL over the row's columns, written as bare case-sensitive
            -- names. Like the extension, split it into SQL tokens, number the columns it
            -- uses ($1, $2, ... by first use) and prepare "select <expr>" with them, so
            -- broken expressions fail here, with the extension's messages. It is evaluated
            -- later with the columns as fields of the row parameter.
            v_src := substr(v_arg, length(v_key) + 2);
            v_len := length(v_src);
            v_toks := '{}';
            v_tkinds := '{}';
            v_used := '{}';
            v_estr := 0;
            i := 1;
            while i <= v_len loop
                v_ch := substr(v_src, i, 1);
                v_nx := substr(v_src, i + 1, 1);
                v_tkind := 'o';
                if v_ch in (' ', E'\t', E'\n', E'\r', E'\f', chr(11)) then
                    v_tok := v_ch;
                    v_tkind := 's';
                elsif v_ch = '-' and v_nx = '-' then
                    j := strpos(substr(v_src, i), E'\n');
                    v_tok := case when j = 0 then substr(v_src, i) else substr(v_src, i, j - 1) end;
                    v_tkind := 's';
                elsif v_ch = '/' and v_nx = '*' then
                    v_depth := 1;
                    j := i + 2;
                    while j <= v_len and v_depth > 0 loop
                        if substr(v_src, j, 2) = '/*' then
                            v_depth := v_depth + 1;
                            j := j + 2;
                        elsif substr(v_src, j, 2) = '*/' then
                            v_depth := v_depth - 1;
                            j := j + 2;
                        else
                            j := j + 1;
                        end if;
                    end loop;
                    if v_depth > 0 then
                        raise exception 'QB: syntax error' using errcode = 'internal_error';
                    end if;
                    v_tok := substr(v_src, i, j - i);
                    v_tkind := 's';
                elsif v_ch = '''' then
                    j := i + 1;
                    loop
                        if j > v_len then
                            raise exception 'QB: syntax error' using errcode = 'internal_error';
                        end if;
                        if v_estr = i and substr(v_src, j, 1) = chr(92) then
                            j := j + 2;
                        elsif substr(v_src, j, 1) = '''' then
                            j := j + 1;
                            exit when substr(v_src, j, 1) <> '''';
                            j := j + 1;
                        else
                            j := j + 1;
                        end if;
                    end loop;
                    v_tok := substr(v_src, i, j - i);
                elsif v_ch = '"' then
                    -- Quoted names are refused; an unterminated quote is left to the parser.
                    j := i + 1;
                    loop
                        exit when j > v_len;
                        if substr(v_src, j, 1) = '"' then
                            exit when substr(v_src, j + 1, 1) <> '"';
                            j := j + 1;
                        end if;
                        j := j + 1;
                    end loop;
                    if j > v_len then
                        v_tok := '"';
                    elsif j = i + 1 then
                        v_tok := '""';
                    else
                        raise exception 'QB: syntax error' using errcode = 'internal_error';
                    end if;
                elsif v_ch = '$' then
                    v_tok := substring(substr(v_src, i) from '^\$[0-9]+');
                    if v_tok is not null then
                        v_tkind := 'p';
                    else
                        v_tok := substring(substr(v_src, i) from '^\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$');
                        j := case when v_tok is null then 0
                                  else strpos(substr(v_src, i + length(v_tok)), v_tok) end;
                        if j = 0 then
                            raise exception 'QB: syntax error' using errcode = 'internal_error';
                        end if;
                        v_tok := substr(v_src, i, 2 * length(v_tok) + j - 1);
                    end if;
                elsif v_ch ~ '^[A-Za-z_]$' then
                    -- a name, possibly qualified (a.b, a."b"): only plain ones can be columns
                    j := i + 1;
                    loop
                        v_nx := substr(v_src, j, 1);
                        if v_nx ~ '^[A-Za-z0-9_.]$' then
                            j := j + 1;
                        elsif v_nx = '"' then
                            j := j + 1;
                            loop
                                if j > v_len then
                                    raise exception 'QB: syntax error' using errcode = 'internal_error';
                                end if;
                                j := j + 1;
                                if substr(v_src, j - 1, 1) = '"' then
                                    exit when substr(v_src, j, 1) <> '"';
                                    j := j + 1;
                                end if;
                            end loop;
                        else
                            exit;
                        end if;
                    end loop;
                    v_tok := substr(v_src, i, j - i);
                    if v_tok in ('E', 'e') and v_nx = '''' then
                        v_estr := j;
                    elsif v_tok ~ '^[A-Za-z_][A-Za-z0-9_]*$' and v_tok = any(v_names) then
                        v_tkind := 'c';
                        if not v_tok = any(v_used) then
                            v_used := v_used || v_tok;
                        end if;
                    end if;
                elsif v_ch ~ '^[0-9]$' or (v_ch = '.' and v_nx ~ '^[0-9]$') then
                    j := i;
                    v_e := false;
                    loop
                        v_nx := substr(v_src, j, 1);
                        if v_nx ~ '^[0-9.]$' then
                            j := j + 1;
                        elsif v_nx in ('e', 'E') and not v_e then
                            v_e := true;
                            j := j + 1;
                            if substr(v_src, j, 1) ~ '^[-+A-Za-z0-9_]$' then
                                j := j + 1;
                            end if;
                        else
                            exit;
                        end if;
                    end loop;
                    v_tok := substr(v_src, i, j - i);
                elsif v_ch = '.' or ascii(v_ch) > 127 then
                    raise exception 'QB: syntax error' using errcode = 'internal_error';
                else
                    v_tok := v_ch;
                    if v_tok = ';' then
                        v_tkind := ';';
                    end if;
                end if;
                i := i + length(v_tok);
                v_toks := v_toks || v_tok;
                v_tkinds := v_tkinds || v_tkind;
            end loop;
            -- prepare: the extension's text; evaluate: columns as fields of $1, without
            -- trailing semicolons
            v_out := '';
            v_src := '';
            j := 0;
            for t in 1 .. coalesce(array_length(v_toks, 1), 0) loop
                v_tok := v_toks[t];
                if v_tkinds[t] = 'c' then
                    v_src := v_src || '$' || array_position(v_used, v_tok);
                    v_tok := '($1).' || quote_ident(v_tok);
                else
                    v_src := v_src || v_tok;
                    if v_tkinds[t] = 'p' then
                        -- $n refers to the n-th column used
                        if length(v_tok) > 10 or substr(v_tok, 2)::bigint not between 1 and coalesce(array_length(v_used, 1), 0) then
                            raise exception 'there is no parameter %', v_tok using errcode = 'undefined_parameter';
                        end if;
                        v_tok := '($1).' || quote_ident(v_used[substr(v_tok, 2)::integer]);
                    end if;
                end if;
                v_out := v_out || v_tok;
                if v_tkinds[t] not in ('s', ';') then
                    j := length(v_out);
                end if;
            end loop;
            v_out := left(v_out, j);
            if v_out <> '' then
                if exists (select 1 from pg_catalog.pg_prepared_statements where name = 'pgq_triga_expr') then
                    execute 'deallocate pgq_triga_expr';
                end if;
                execute 'prepare pgq_triga_expr'
                        || coalesce('(' || (select string_agg(format_type(v_types[array_position(v_names, u)], null), ', ')
                                              from unnest(v_used) u) || ')', '')
                        || ' as select ' || v_src;
                execute 'deallocate pgq_triga_expr';
            end if;
            v_expr[k] := v_out;
        else
            raise exception 'bad param to pgq trigger' using errcode = 'internal_error';
        end if;
    end loop;

    if TG_OP = 'TRUNCATE' then
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

    if TG_OP in ('UPDATE', 'DELETE') and v_pkey = '' then
        raise exception 'Update/Delete on table without pkey' using errcode = 'internal_error';
    end if;
    if v_skip and TG_WHEN = 'AFTER' then
        raise exception 'SKIP does not work in AFTER trigger.' using errcode = 'internal_error';
    end if;
    if v_deny then
        raise exception 'Table ''%'' to queue ''%'': change not allowed (%)', v_table, v_queue, TG_OP
            using errcode = 'internal_error';
    end if;

    if TG_OP = 'TRUNCATE' then
        if c_kind = 'json' then
            v_ev[1] := '{"op":"TRUNCATE","table":[' || to_json(TG_TABLE_SCHEMA::text) || ','
                       || to_json(TG_TABLE_NAME::text) || '],"pkey":['
                       || coalesce((select string_agg(to_json(p)::text, ',') from unnest(v_pkey_names) p), '')
                       || ']}';
            v_ev[2] := '{}';
        else
            v_ev[1] := 'R';
            v_ev[2] := '';
        end if;
        v_ev[3] := v_table;
        perform pgq.insert_event(v_queue, v_ev[1], v_ev[2], v_ev[3], v_ev[4], v_ev[5], v_ev[6]);
        return null;
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

    -- The row images as text: the types' output functions (a plain cast to text where
    -- that is the same, for the common built-in types), except that jsontriga writes
    -- dates and timestamps the way JSON does.
    v_sql := '';
    v_set := '';
    for c in 1 .. coalesce(array_length(v_names, 1), 0) loop
        v_key := quote_ident(v_names[c]);
        v_sql := v_sql || case when c > 1 then ', ' else '' end;
        v_set := v_set || case when c > 1 then ', ' else '' end;
        if c_kind = 'json' and v_types[c] in (1082, 1114, 1184) and not v_magic_col[c] then
            v_sql := v_sql || 'to_json(($1).' || v_key || ')::text';
            v_set := v_set || 'to_json(($2).' || v_key || ')::text';
        elsif v_types[c] in (20, 21, 23, 25, 26, 17, 114, 700, 701, 1043, 1082, 1083, 1114, 1184, 1186, 1266, 1700, 2950, 3802) then
            v_sql := v_sql || '($1).' || v_key || '::text';
            v_set := v_set || '($2).' || v_key || '::text';
        else
            v_sql := v_sql || 'case when num_nulls(($1).' || v_key || ') = 0 then format(''%s'', ($1).' || v_key || ') end';
            v_set := v_set || 'case when num_nulls(($2).' || v_key || ') = 0 then format(''%s'', ($2).' || v_key || ') end';
        end if;
    end loop;
    if TG_OP = 'UPDATE' then
        execute 'select array[' || v_sql || ']::text[], array[' || v_set || ']::text[]'
           into v_new, v_old using new, old;
        v_row := new;
        v_vals := v_new;
    elsif TG_OP = 'INSERT' then
        execute 'select array[' || v_sql || ']::text[]' into v_new using new;
        v_row := new;
        v_vals := v_new;
    else
        execute 'select array[' || v_sql || ']::text[]' into v_old using old;
        v_row := old;
        v_vals := v_old;
    end if;

    -- Which columns an UPDATE changed: for types with a default equality (a btree or
    -- hash opclass, directly or through a binary-coercible cast; for domains and
    -- composites every type inside) "not equal", for the others "prints differently".
    -- Arrays, also under domains, count as having none (as in the extension), but inside
    -- composites their elements' equality counts. Equal output implies equal values,
    -- except for floats printed with extra_float_digits < 1, so only columns that print
    -- differently (or such floats) are looked at, and the types whose output is exact
    -- (integers, text, timestamps, ...) need no equality at all.
    if TG_OP = 'UPDATE' then
        v_changed := '{}';
        v_sql := null;
        v_efd := current_setting('extra_float_digits')::integer < 1;
        for c in 1 .. coalesce(array_length(v_names, 1), 0) loop
            v_changed[c] := v_new[c] is distinct from v_old[c];
            continue when not (v_changed[c] or (v_efd and v_types[c] in (700, 701)))
                          or v_types[c] in (16, 17, 18, 19, 20, 21, 23, 25, 26, 1043, 1082, 1083, 1114, 1184, 2950);
            if v_types[c] in (700, 701, 1042, 1186, 1266, 1700, 3802) then
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
            execute 'select array[' || v_sql || ']' into v_eq_changed using new, old;
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
    if TG_OP = 'UPDATE' then
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
        if c_kind = 'sql' then
            v_emit := v_n_changed > 0 or v_n_ignored = 0;
        else
            v_emit := v_ignore is null or v_n_changed > 0 or v_n_ignored = 0;
        end if;
    end if;

    if v_emit then
        if c_kind = 'sql' and TG_OP <> 'INSERT' then
            if TG_OP = 'UPDATE' and v_set is null then
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
        if c_kind = 'logu' then
            v_ev[1] := left(TG_OP, 1) || ':' || v_pkey;
        elsif c_kind = 'sql' then
            v_ev[1] := left(TG_OP, 1);
            if TG_OP = 'INSERT' then
                select '(' || coalesce(string_agg(quote_ident(u.n), ',' order by u.i), '') || ') values ('
                       || coalesce(string_agg(coalesce(quote_literal(u.v), 'null'), ',' order by u.i), '') || ')'
                  into v_res
                  from unnest(v_names, v_vals, v_ign_col, v_magic_col) with ordinality u(n, v, ig, mg, i)
                 where not u.ig and not u.mg;
                v_ev[2] := v_res;
            elsif TG_OP = 'UPDATE' then
                v_ev[2] := v_set || ' where ' || v_where;
            else
                v_ev[2] := v_where;
            end if;
        else
            v_ev[1] := '{"op":' || to_json(TG_OP::text) || ',"table":[' || to_json(TG_TABLE_SCHEMA::text) || ','
                       || to_json(TG_TABLE_NAME::text) || '],"pkey":['
                       || coalesce((select string_agg(to_json(p)::text, ',') from unnest(v_pkey_names) p), '')
                       || ']}';
        end if;
        -- ev_data (logutriga, jsontriga) and, with backup, the old row in ev_extra2
        for r in 1 .. case when v_backup and TG_OP = 'UPDATE' then 2 else 1 end loop
            continue when c_kind = 'sql' and r = 1;
            v_vals := case when r = 2 or TG_OP = 'DELETE' then v_old else v_new end;
            v_res := '';
            for c in 1 .. coalesce(array_length(v_names, 1), 0) loop
                continue when v_ign_col[c] or v_magic_col[c];
                if c_kind = 'json' then
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
            if c_kind = 'json' then
                v_res := '{' || v_res || '}';
            end if;
            v_ev[case r when 1 then 2 else 4 end] := v_res;
        end loop;

        -- deprecated: _pgq_ev_* columns set the event fields
        v_vals := case when TG_OP = 'DELETE' then v_old else v_new end;
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
                execute 'select count(*), (array_agg(pg_typeof(s.x)::oid))[1], '
                        || '(array_agg(case when num_nulls(s.x) = 0 then format(''%s'', s.x) end))[1] '
                        || 'from (select ' || v_expr[e] || E'\n) s(x)'
                   into v_cnt, v_typ, v_res using v_row;
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

    if v_skip then
        return null;
    elsif TG_OP = 'DELETE' then
        return old;
    end if;
    return new;
end;
$trigger$;
    v_fn record;
begin
    for v_fn in select * from (values ('logutriga', 'logu'), ('sqltriga', 'sql'), ('jsontriga', 'json')) k(name, kind) loop
        execute format('create or replace function pgq.%I() returns trigger as %L language plpgsql',
                       v_fn.name, replace(v_body, '@KIND@', v_fn.kind));
    end loop;
end
$install$;
