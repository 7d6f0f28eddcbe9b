#!/usr/bin/python3
"""Baseline for bench case consume: a plain pgq.Consumer reading a prepared backlog.

    consume_backlog.py consume.ini

Section [consume_backlog]: job_name, db, queue_name, consumer_name, pgq_lazy_fetch,
loop_delay, logfile (the usual pgq.Consumer keys), plus the benchmark's own:
  expect_events  stop after the batch in which this many events were seen
  result_file    written at the end: one JSON object with the counts and timings
  deadline       seconds; SIGALRM ends a run that hangs (default action: terminate)

process_event does the minimal work pgfan's counting handler does: count the event and
read the length of its data. The clock starts when the first work() call starts (before
the consumer connects, as pgfan's measurement starts before it connects) and stops when
the work() that saw the last event returns, i.e. after its finish_batch committed.
Runs under /usr/bin/python3 (python3-pgq).
"""

import json
import signal
import sys
import time

import pgq


class BacklogConsumer(pgq.Consumer):
    def __init__(self, args):
        super().__init__("consume_backlog", "db", args)
        self.expect = self.cf.getint("expect_events")
        self.result_file = self.cf.getfile("result_file")
        self.events = 0
        self.data_bytes = 0
        self.batches = 0
        self.clock_start = None

    def process_event(self, db, ev):
        self.events += 1
        self.data_bytes += len(ev.data)

    def work(self):
        if self.clock_start is None:
            self.clock_start = time.monotonic()
        more = super().work()
        if more:
            self.batches += 1
        if self.events >= self.expect:
            elapsed = time.monotonic() - self.clock_start
            with open(self.result_file, "w") as f:
                json.dump(
                    {
                        "events": self.events,
                        "data_bytes": self.data_bytes,
                        "batches": self.batches,
                        "seconds": elapsed,
                    },
                    f,
                )
            self.looping = 0
        return more

    def exception_hook(self, det, emsg):
        # DBScript would sleep and retry; a benchmark run fails fast instead.
        super().exception_hook(det, emsg)
        sys.exit(3)


if __name__ == "__main__":
    consumer = BacklogConsumer(sys.argv[1:])
    signal.alarm(consumer.cf.getint("deadline", 3600))
    consumer.start()
