"""Loading a canonical data directory: :class:`SRData` and the per-user :class:`SequenceStore`."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import polars as pl

from gensr.data import schema
from gensr.errors import DataError
from gensr.files import read_json, read_parquet

_USER_STRIDE = np.int64(1) << 40
#: what to do about a damaged file of a data directory
AGAIN = "prepare the data directory again (gensr data prepare … --overwrite)"
REQUIRED_FILES = ("meta.json", "interactions.parquet", "items.parquet", "queries.parquet")


@dataclass
class SequenceStore:
    """Every user's interactions in chronological order, as flat arrays (CSR by user).

    ``behaviour`` codes: 1 = rec, 2 = src (0 = padding). ``query`` is 0 for rec rows.
    """

    indptr: np.ndarray  # (n_users + 2,)
    item: np.ndarray
    behaviour: np.ndarray
    query: np.ndarray
    seq: np.ndarray

    @classmethod
    def from_interactions(cls, inter: pl.DataFrame, n_users: int) -> SequenceStore:
        inter = inter.sort("user_id", "seq", "behaviour")
        users = inter["user_id"].to_numpy().astype(np.int64)
        counts = np.bincount(users, minlength=n_users + 1)
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        indptr = np.concatenate([indptr, indptr[-1:]])  # room for a user id = n_users + 1
        beh = np.where(inter["behaviour"].to_numpy() == "rec", 1, 2).astype(np.int64)
        return cls(
            indptr=indptr,
            item=inter["item_id"].to_numpy().astype(np.int64),
            behaviour=beh,
            query=inter["query_id"].fill_null(0).to_numpy().astype(np.int64),
            seq=inter["seq"].to_numpy().astype(np.int64),
        )

    def history_end(self, users: np.ndarray, seqs: np.ndarray) -> np.ndarray:
        """Index one past the last row of each user with seq < the given seq."""
        users = np.asarray(users, dtype=np.int64)
        seqs = np.asarray(seqs, dtype=np.int64)
        start, stop = self.indptr[users], self.indptr[users + 1]
        end = np.searchsorted(self._keyed, seqs + _USER_STRIDE * users, side="left")
        return np.clip(end, start, stop)

    def history(
        self, users: np.ndarray, seqs: np.ndarray, max_len: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The last ``max_len`` interactions strictly before ``seqs``, left-padded with 0.

        Returns (items, behaviours, queries), each (N, max_len); the most recent is last.
        """
        users = np.asarray(users, dtype=np.int64)
        start = self.indptr[users]
        end = self.history_end(users, seqs)
        idx = end[:, None] - max_len + np.arange(max_len)[None, :]
        valid = idx >= start[:, None]
        idx = np.where(valid, idx, 0)
        if len(self.item) == 0:
            z = np.zeros((len(users), max_len), dtype=np.int64)
            return z, z.copy(), z.copy()
        return (
            np.where(valid, self.item[idx], 0),
            np.where(valid, self.behaviour[idx], 0),
            np.where(valid, self.query[idx], 0),
        )

    def window_counts(
        self, users: np.ndarray, seqs: np.ndarray, max_len: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """What :meth:`history` with ``max_len`` holds for each instance: (interactions,
        events), an *event* being one ``seq`` value (a purchase's rec and src twins are one
        event; a window may cut a pair and hold one of its rows)."""
        users = np.asarray(users, dtype=np.int64)
        end = self.history_end(users, seqs)
        lo = np.maximum(self.indptr[users], end - max_len)
        rows = end - lo
        # new[i] = 1 where row i starts a new event (a seq different from row i - 1's)
        new = np.concatenate([[0], (np.diff(self.seq) != 0).astype(np.int64)])
        prefix = np.concatenate([[0], np.cumsum(new)])
        events = np.where(rows > 0, 1 + prefix[end] - prefix[np.minimum(lo + 1, end)], 0)
        return rows, events

    @cached_property
    def _keyed(self) -> np.ndarray:
        """seq offset by user, so one sorted array can be searched for (user, seq)."""
        owner = np.repeat(np.arange(len(self.indptr) - 1), np.diff(self.indptr))
        return self.seq + _USER_STRIDE * owner


class SRData:
    """A canonical S&R data directory, loaded.

    Attributes: ``meta`` (meta.json), ``interactions``, ``items``, ``queries`` (polars),
    ``n_users``/``n_items``/``n_queries``, ``item_text``/``query_text`` (lists indexed by id,
    entry 0 = ""), ``sequences`` (:class:`SequenceStore` over all splits; histories are always
    cut at an instance's ``seq`` so no interaction at or after it is visible).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise DataError(f"data directory {self.path} does not exist "
                            "(make one with `gensr data prepare`)")
        for name in REQUIRED_FILES:
            if not (self.path / name).exists():
                raise DataError(f"{name} is missing: not a gensr data directory",
                                file=str(self.path))
        self.meta: dict = read_json(self.path / "meta.json", DataError, hint=AGAIN)
        version = self.meta.get("schema_version")
        if version != schema.SCHEMA_VERSION:
            raise DataError(f"schema version {version} is not {schema.SCHEMA_VERSION}; "
                            "prepare the data again", file=str(self.path / "meta.json"))
        self.interactions = read_parquet(self.path / "interactions.parquet", hint=AGAIN)
        self.items = read_parquet(self.path / "items.parquet", hint=AGAIN)
        self.queries = read_parquet(self.path / "queries.parquet", hint=AGAIN)
        self.n_users = int(self.meta["n_users"])
        self.n_items = int(self.meta["n_items"])
        self.n_queries = int(self.meta["n_queries"])
        self.fingerprint: str = self.meta["fingerprint"]
        self.sequences = SequenceStore.from_interactions(self.interactions, self.n_users)

    @property
    def name(self) -> str:
        return str(self.meta.get("name", self.path.name))

    @cached_property
    def item_text(self) -> list[str]:
        return [""] + self.items.sort("item_id")["text"].to_list()

    @cached_property
    def item_category(self) -> list[str]:
        return [""] + self.items.sort("item_id")["category"].to_list()

    @cached_property
    def query_text(self) -> list[str]:
        return [""] + self.queries.sort("query_id")["text"].to_list()

    @cached_property
    def item_orig_id(self) -> list[str]:
        """Canonical item id -> original item id ("" at 0, the padding)."""
        return [""] + self.items.sort("item_id")["orig_id"].to_list()

    @cached_property
    def item_index(self) -> dict[str, int]:
        """Original item id -> canonical id."""
        return dict(zip(self.items["orig_id"].to_list(), self.items["item_id"].to_list()))

    @cached_property
    def user_index(self) -> dict[str, int]:
        """Original user id -> canonical id (``users.parquet``; empty if the file is absent)."""
        path = self.path / "users.parquet"
        if not path.is_file():
            return {}
        users = read_parquet(path, hint=AGAIN)
        return dict(zip(users["orig_id"].to_list(), users["user_id"].to_list()))

    @cached_property
    def user_orig_id(self) -> list[str]:
        """Canonical user id -> original user id ("" at 0 and for ids without a record)."""
        out = [""] * (self.n_users + 1)
        for orig, uid in self.user_index.items():
            if 0 < uid <= self.n_users:
                out[uid] = orig
        return out

    @cached_property
    def query_index(self) -> dict[str, int]:
        """Query text -> canonical id."""
        return dict(zip(self.queries["text"].to_list(), self.queries["query_id"].to_list()))

    def train(self) -> pl.DataFrame:
        """The training-split interactions."""
        return self.interactions.filter(pl.col("split") == "train")

    def candidates(self, split: str, strategy: str = "uniform") -> pl.DataFrame:
        """The stored evaluation instances of ``split`` ("valid" or "test") with the
        candidates of ``strategy`` (see :mod:`gensr.data.candidates`)."""
        if split not in ("valid", "test"):
            raise DataError(f"split must be 'valid' or 'test', not {split!r}")
        path = self.path / schema.candidates_filename(split, strategy)
        if not path.exists():
            if strategy == "uniform":
                raise DataError("candidates file is missing", file=str(path))
            raise DataError(f"no {strategy} candidates: make them with `gensr data candidates "
                            f"{self.path} --strategy {strategy}`", file=str(path))
        if strategy == "uniform":
            return read_parquet(path, hint=AGAIN)
        return read_parquet(path, hint=f"make them again with `gensr data candidates "
                                     f"{self.path} --strategy {strategy} --overwrite`")

    def popularity(self, behaviour: str | None = None) -> np.ndarray:
        """Training-split interaction counts per item id (index 0 = padding)."""
        train = self.train()
        if behaviour is not None:
            train = train.filter(pl.col("behaviour") == behaviour)
        return np.bincount(train["item_id"].to_numpy(), minlength=self.n_items + 1).astype(
            np.float64
        )


def load_data(path: str | Path) -> SRData:
    """Load a canonical data directory (see :mod:`gensr.data.schema`)."""
    return SRData(path)
