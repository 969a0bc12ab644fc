"""Request bodies rebuilt from a data split's evaluation instances.

The same (history, candidates, query) an instance gives ``gensr evaluate``, written as the
JSON body of ``POST /v1/rank`` in original item ids and query text: for checking that the
service ranks as the evaluator scores, and for load benchmarks on realistic requests.
"""

from __future__ import annotations

from gensr.data.batching import InstanceTable
from gensr.data.dataset import SRData


def instance_requests(data: SRData, table: InstanceTable, max_history: int | None = None
                      ) -> list[dict]:
    """One request body per instance of ``table``: the user (original id), the user's history
    before the instance (all of it, or its last ``max_history`` interactions), the candidates,
    and the query of a search instance."""
    orig = data.item_orig_id
    users = data.user_orig_id
    seqs = data.sequences
    ends = seqs.history_end(table.user, table.seq)
    bodies = []
    for row in range(len(table)):
        start = int(seqs.indptr[table.user[row]])
        end = int(ends[row])
        if max_history is not None:
            start = max(start, end - max_history)
        history = []
        for j in range(start, end):
            entry = {"item": orig[seqs.item[j]],
                     "behaviour": "rec" if seqs.behaviour[j] == 1 else "src"}
            if seqs.query[j]:
                entry["query"] = data.query_text[seqs.query[j]]
            history.append(entry)
        body = {"history": history, "candidates": [orig[c] for c in table.candidates[row]],
                "user": users[table.user[row]]}
        if table.task[row] == 1:
            body["query"] = data.query_text[table.query[row]]
        bodies.append(body)
    return bodies
