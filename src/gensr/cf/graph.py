"""The user–item graph LightGCN propagates on, and BPR negative sampling over it.

Nodes are compact: users ``0..U-1`` then items ``U..U+I-1``, only those with at least one
training-split rec interaction (an item or user absent from that graph has no neighbours, so
LightGCN cannot learn anything about it; it gets the fallback vector, see
:mod:`gensr.cf.pretrain`). The adjacency is the symmetrically normalised
``D^-1/2 A D^-1/2`` of the bipartite graph, stored once as a sparse CSR tensor, so memory is
O(edges) and KuaiSAR-scale graphs (millions of items, ~15M edges) fit.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from gensr.data.candidates import InteractedSet


@dataclass
class RecGraph:
    """A deduplicated bipartite user–item graph with compact node ids.

    ``user_ids``/``item_ids``: the canonical ids of the user and item nodes (sorted);
    ``edge_user``/``edge_item``: compact indices (0-based within users / within items) of each
    distinct (user, item) edge.
    """

    user_ids: np.ndarray
    item_ids: np.ndarray
    edge_user: np.ndarray
    edge_item: np.ndarray

    @property
    def n_user_nodes(self) -> int:
        return len(self.user_ids)

    @property
    def n_item_nodes(self) -> int:
        return len(self.item_ids)

    @property
    def n_nodes(self) -> int:
        return self.n_user_nodes + self.n_item_nodes

    @property
    def n_edges(self) -> int:
        return len(self.edge_user)

    @classmethod
    def from_interactions(cls, users: np.ndarray, items: np.ndarray) -> RecGraph:
        """From parallel arrays of canonical (user id, item id), duplicates dropped."""
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        user_ids, edge_user = np.unique(users, return_inverse=True)
        item_ids, edge_item = np.unique(items, return_inverse=True)
        key = np.unique(edge_user.astype(np.int64) * max(len(item_ids), 1) + edge_item)
        n_i = max(len(item_ids), 1)
        return cls(user_ids=user_ids, item_ids=item_ids, edge_user=key // n_i,
                   edge_item=key % n_i)

    def normalized_adjacency(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """``D^-1/2 A D^-1/2`` of the symmetric bipartite graph as a (N, N) sparse CSR tensor."""
        u = self.edge_user
        i = self.edge_item + self.n_user_nodes
        rows = np.concatenate([u, i])
        cols = np.concatenate([i, u])
        deg = np.bincount(rows, minlength=self.n_nodes).astype(np.float64)
        inv = np.zeros_like(deg)
        inv[deg > 0] = deg[deg > 0] ** -0.5
        order = np.lexsort((cols, rows))
        rows, cols = rows[order], cols[order]
        values = (inv[rows] * inv[cols]).astype(np.float32)
        crow = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=self.n_nodes))])
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            adj = torch.sparse_csr_tensor(
                torch.from_numpy(crow.astype(np.int64)), torch.from_numpy(cols.astype(np.int64)),
                torch.from_numpy(values), size=(self.n_nodes, self.n_nodes),
                check_invariants=False,
            )
        return adj.to(device)


class NegativeSampler:
    """Uniform negatives among the graph's items, never one the user interacted with.

    ``interacted`` holds the (canonical user, canonical item) pairs to avoid (gensr passes the
    user's training-split interactions of either behaviour; valid/test are never looked at).
    Rejected draws are redrawn up to ``max_rounds`` times; a user who interacted with nearly
    every item may keep a rare collision after that rather than loop forever.
    """

    def __init__(self, graph: RecGraph, interacted: InteractedSet | None,
                 rng: np.random.Generator, max_rounds: int = 20) -> None:
        self.graph = graph
        self.interacted = interacted
        self.rng = rng
        self.max_rounds = max_rounds

    def sample(self, edge_user: np.ndarray) -> np.ndarray:
        """One compact item index per compact user index in ``edge_user``."""
        n_items = self.graph.n_item_nodes
        neg = self.rng.integers(0, n_items, size=len(edge_user))
        if self.interacted is None:
            return neg
        users = self.graph.user_ids[edge_user]
        todo = np.arange(len(edge_user))
        for _ in range(self.max_rounds):
            bad = self.interacted.contains(users[todo], self.graph.item_ids[neg[todo]])
            todo = todo[bad]
            if not len(todo):
                break
            neg[todo] = self.rng.integers(0, n_items, size=len(todo))
        return neg
