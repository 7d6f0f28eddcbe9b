#!/usr/bin/python3
"""Producer for tests/pgq_tools.rs: puts events into a queue with python-pgq's own helpers.

Usage: pgq_produce.py CONNSTR QUEUE EVENT...
  EVENT is `single:TYPE:DATA` (sent with pgq.insert_event, i.e. SQL pgq.insert_event(7)) or
  `bulk:TYPE:DATA` (all bulk events go in one pgq.bulk_insert_events call, which COPYs into
  the table named by pgq.current_event_table). Single events commit first, then the bulk ones.
  Bulk rows carry type, data and time: PgQ's event tables default ev_id and ev_txid only,
  ev_time is NOT NULL without a default, so COPY callers must send it.
Must run under /usr/bin/python3, the interpreter python3-pgq is installed for.
"""

import datetime
import sys

import pgq
import skytools


def main():
    connstr, queue, specs = sys.argv[1], sys.argv[2], sys.argv[3:]
    single, bulk = [], []
    for spec in specs:
        kind, ev_type, data = spec.split(":", 2)
        {"single": single, "bulk": bulk}[kind].append((ev_type, data))
    db = skytools.connect_database(connstr)
    curs = db.cursor()
    for ev_type, data in single:
        pgq.insert_event(curs, queue, ev_type, data)
    db.commit()
    if bulk:
        now = datetime.datetime.now(datetime.timezone.utc).isoformat()
        rows = [[ev_type, data, now] for ev_type, data in bulk]
        pgq.bulk_insert_events(curs, rows, ["type", "data", "time"], queue)
        db.commit()
    db.close()


if __name__ == "__main__":
    main()
