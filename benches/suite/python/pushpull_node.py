#!/usr/bin/python3
"""Baseline for bench cases delivery and latency: the pull side, one process per node.

A pgq.RemoteConsumer on the node's pull queue on the master. It applies each copy event as a
parameterised INSERT in the node database and answers with a result event in the master's
`results` queue. RemoteConsumer commits the node transaction together with the batch id in
pgq_ext's ledger (so a batch is applied once even if the process dies before finish_batch),
then the master transaction with the result events and finish_batch.

    pushpull_node.py node.ini

with a section [pushpull_node]: job_name, master_db, node_db (connect strings), queue_name,
consumer_name, node_name.
"""

import sys

import pgq
import skytools


class PullNode(pgq.RemoteConsumer):
    def __init__(self, service_name, db_name, remote_db, args):
        super().__init__(service_name, db_name, remote_db, args)
        self.node_name = self.cf.get("node_name")

    def process_remote_batch(self, db, batch_id, event_list, dst_db):
        master_curs = db.cursor()
        node_curs = dst_db.cursor()
        for ev in event_list:
            self.process_remote_event(master_curs, node_curs, ev)

    def process_remote_event(self, master_curs, node_curs, ev):
        row = skytools.db_urldecode(ev.data)
        if ev.type != "copy" or row.get("action") != "ins":
            raise Exception("unsupported event %s: %s" % (ev.type, ev.data))
        node_curs.execute(
            "insert into t (id, name) values (%s, %s)", [row["id"], row["name"]]
        )
        # ev_extra1 carries the job id the relay assigned.
        master_curs.execute(
            "select pgq.insert_event('results', 'done', %s, %s, null, null, null)",
            [ev.extra1, self.node_name],
        )


if __name__ == "__main__":
    PullNode("pushpull_node", "master_db", "node_db", sys.argv[1:]).start()
