#!/usr/bin/python3
"""Baseline for bench cases delivery and latency: the result side.

A pgq.Consumer on the master's `results` queue that marks each job done. The job table's
trigger sends NOTIFY job_done, '<job id>' (as pgfan's reducer sends NOTIFY pgfan_job), so a
waiting client learns at commit that the result is there.

    pushpull_reducer.py reducer.ini

with a section [pushpull_reducer]: job_name, master_db, queue_name, consumer_name.
"""

import sys

import pgq


class ResultReducer(pgq.Consumer):
    def process_event(self, db, ev):
        curs = db.cursor()
        curs.execute(
            "update job set state = 'done', done_by = %s, done_at = clock_timestamp()"
            " where job_id = %s",
            [ev.extra1, int(ev.data)],
        )


if __name__ == "__main__":
    ResultReducer("pushpull_reducer", "master_db", sys.argv[1:]).start()
