#!/usr/bin/python3
"""A plain pgq.RemoteConsumer for tests/pgq_tools.rs: copies events into another database.

Usage: pgq_remote_consumer.py CONFIG.ini [--register]
Config section [pgq_remote_consumer]: src_db (queue database), dst_db (database with
pgq_ext and the table remote_events(ev_id bigint, ev_data text)), queue_name,
consumer_name, loop_delay, plus the test's own keys:
  trace_file   one line per batch: "batch <id> skipped" (pgq_ext says it is done) or
               "batch <id> applied <n>"
  expect_rows  the script stops (exit 0) once remote_events holds this many rows
If the environment has PGQ_TEST_CRASH_AFTER_REMOTE_COMMIT=1, the process dies with
os._exit(17) right after the first batch with events was committed in dst_db, before
pgq.finish_batch runs: the crash window RemoteConsumer's pgq_ext bookkeeping covers.
Any exception exits with status 3. Runs under /usr/bin/python3 (python3-pgq).
"""

import os
import sys

import pgq


class RemoteInsert(pgq.RemoteConsumer):
    def __init__(self, args):
        super().__init__("pgq_remote_consumer", "src_db", "dst_db", args)
        self.trace_file = self.cf.getfile("trace_file")
        self.expect_rows = self.cf.getint("expect_rows")
        self.crash = os.environ.get("PGQ_TEST_CRASH_AFTER_REMOTE_COMMIT") == "1"
        self.skipped = False

    def trace(self, line):
        with open(self.trace_file, "a") as f:
            f.write(line + "\n")

    def is_last_batch(self, dst_curs, batch_id):
        self.skipped = super().is_last_batch(dst_curs, batch_id)
        return self.skipped

    def process_remote_batch(self, db, batch_id, event_list, dst_db):
        curs = dst_db.cursor()
        n = 0
        for ev in event_list:
            curs.execute(
                "insert into remote_events (ev_id, ev_data) values (%s, %s)",
                [ev.ev_id, ev.ev_data],
            )
            n += 1
        self.applied = n

    def process_batch(self, db, batch_id, event_list):
        self.skipped = False
        self.applied = 0
        # pgq.RemoteConsumer: is_batch_done, process_remote_batch, set_batch_done, commit dst
        super().process_batch(db, batch_id, event_list)
        if self.skipped:
            self.trace("batch %d skipped" % batch_id)
        else:
            self.trace("batch %d applied %d" % (batch_id, self.applied))
        if self.crash and self.applied > 0:
            os._exit(17)

    def work(self):
        more = super().work()
        dst = self.get_database("dst_db")
        curs = dst.cursor()
        curs.execute("select count(*) from remote_events")
        rows = curs.fetchone()[0]
        dst.commit()
        if rows >= self.expect_rows:
            self.log.info("remote has %d rows, stopping", rows)
            self.looping = 0
        return more

    def exception_hook(self, det, emsg):
        super().exception_hook(det, emsg)
        sys.exit(3)


if __name__ == "__main__":
    RemoteInsert(sys.argv[1:]).start()
