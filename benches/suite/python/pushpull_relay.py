#!/usr/bin/python3
"""Baseline for bench cases delivery and latency: the push side of a classic Skytools
push/pull setup.

A pgq.Consumer on the master's push queue. Each event names its target node in ev_extra1;
the relay records a job row for it and re-queues the event into that node's pull queue,
both in the batch transaction that pgq.Consumer commits together with finish_batch, so a
crash never loses or doubles a routed event.

    pushpull_relay.py relay.ini

with a section [pushpull_relay]: job_name, master_db (connect string), queue_name,
consumer_name. Everything else is pgq.Consumer's defaults (loop_delay 1 s, lazy fetch 300).
"""

import sys

import pgq


class PushRelay(pgq.Consumer):
    def process_event(self, db, ev):
        node = ev.extra1
        curs = db.cursor()
        # The push event's id is the job id, as pgfan's relay makes one job per raw event.
        curs.execute(
            "insert into job (job_id, node, state) values (%s, %s, 'running')",
            [ev.id, node],
        )
        curs.execute(
            "select pgq.insert_event(%s, %s, %s, %s, null, null, null)",
            ["pull_" + node, ev.type, ev.data, str(ev.id)],
        )


if __name__ == "__main__":
    PushRelay("pushpull_relay", "master_db", sys.argv[1:]).start()
