#!/usr/bin/python3
"""A plain pgq.Consumer for tests/pgq_tools.rs.

Usage: pgq_collect_consumer.py CONFIG.ini [--register]
Config section [pgq_collect_consumer]: db, queue_name, consumer_name, loop_delay,
pgq_lazy_fetch, plus the test's own keys:
  out_file     every received event is appended as a JSON line [ev_id, ev_type, ev_data, ev_retry]
  expect_lines the script stops (exit 0) after the batch in which this many lines were written
Events whose ev_data starts with "retry" and that were never retried are tagged for retry
once with ev.tag_retry(0). Any exception exits with status 3 instead of DBScript's default
sleep-and-loop, so a failing test fails fast. Runs under /usr/bin/python3 (python3-pgq).
"""

import json
import sys

import pgq


class CollectConsumer(pgq.Consumer):
    def __init__(self, args):
        super().__init__("pgq_collect_consumer", "db", args)
        self.out_file = self.cf.getfile("out_file")
        self.expect_lines = self.cf.getint("expect_lines")
        self.lines = 0

    def process_event(self, db, ev):
        with open(self.out_file, "a") as f:
            f.write(json.dumps([ev.ev_id, ev.ev_type, ev.ev_data, ev.ev_retry]) + "\n")
        self.lines += 1
        if ev.ev_data.startswith("retry") and ev.ev_retry is None:
            ev.tag_retry(0)

    def work(self):
        more = super().work()
        if self.lines >= self.expect_lines:
            self.log.info("seen %d events, stopping", self.lines)
            self.looping = 0
        return more

    def exception_hook(self, det, emsg):
        super().exception_hook(det, emsg)
        sys.exit(3)


if __name__ == "__main__":
    CollectConsumer(sys.argv[1:]).start()
