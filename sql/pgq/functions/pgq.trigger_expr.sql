-- pgq._pgfan_trigger_expr(): checks and rewrites one when= or ev_*= argument of PgQ's
-- change-capture triggers (pgq.logutriga and the others, pgq.triggers.sql).
--
-- The expression is SQL over the row's columns, written as bare case-sensitive names. Like
-- the extension, it is split into SQL tokens, the columns it uses are numbered ($1, $2, ...
-- by first use) and "select <expr>" is prepared with them, so broken expressions fail here
-- with the extension's messages. The result is the expression with the columns as fields
-- of the row parameter $1 (pgq._pgfan_trigger_row evaluates it after building the event),
-- without trailing semicolons; '' for an empty expression.
-- A separate function (owner and pgq_writer only, like the other _pgfan_ helpers it is no
-- part of PgQ's interface) because PL/pgSQL compiles it once per session, not once per
-- trigger like a trigger function.
create or replace function pgq._pgfan_trigger_expr(p_src text, v_names text[], v_types oid[])
returns text as $$
declare
    v_src text := p_src;
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
begin
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
    return v_out;
end;
$$ language plpgsql;

do $grant$
begin
    if exists (select 1 from pg_catalog.pg_roles where rolname = 'pgq_writer') then
        grant execute on function pgq._pgfan_trigger_expr(text, text[], oid[]) to pgq_writer;
    end if;
end
$grant$;
