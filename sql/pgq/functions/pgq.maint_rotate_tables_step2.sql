-- pgq.maint_rotate_tables_step2(): record that table switches have committed.
--
-- Must run in its own transaction after step1 committed: its txid then marks the
-- point after which no transaction can still write into the old table, which is
-- what batch_event_tables and the next step1 rely on. Returns 0.
create or replace function pgq.maint_rotate_tables_step2()
returns integer as $$
begin
    update pgq.queue
        set queue_switch_step2 = txid_current()
        where queue_switch_step2 is null;
    return 0;
end;
$$ language plpgsql;
