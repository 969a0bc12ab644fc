"""The canonical S&R log: declared, typed tables (RecBole-style ``field:type`` headers).

A data directory holds::

    meta.json                 counts, split strategy, fingerprint, adapter settings
    interactions.parquet      one row per interaction (see INTERACTIONS)
    items.parquet             one row per item, id 0 reserved for padding (see ITEMS)
    queries.parquet           one row per distinct query text (see QUERIES)
    users.parquet             id mapping (see USERS)
    candidates_valid.parquet  the evaluation instances with their 100 shuffled candidates
    candidates_test.parquet   (see CANDIDATES)
    report.json / report.md   what the adapter read, dropped and kept

Ids are contiguous integers from 1; 0 is padding everywhere. The original ids are kept in
``orig_id`` columns.
"""

from __future__ import annotations

import pyarrow as pa

from gensr.errors import DataError

# --- the vocabulary of tasks and behaviours (one place; everything else imports it) ---------
BEHAVIOURS: tuple[str, str] = ("rec", "src")
"""The two behaviours, which are also the two tasks: a rec interaction is a recommendation
instance, a src interaction a search instance."""
TASKS: tuple[str, str] = BEHAVIOURS
#: a task's index in batches (``Batch.task``): its position in :data:`TASKS`
TASK_INDEX: dict[str, int] = {name: i for i, name in enumerate(TASKS)}
#: a behaviour's code in history tensors (``Batch.hist_behaviour``; 0 = padding)
BEHAVIOUR_CODES: dict[str, int] = {name: i + 1 for i, name in enumerate(BEHAVIOURS)}
#: how tables and plots title a task
TASK_TITLES: dict[str, str] = {"rec": "Recommendation", "src": "Search"}

SPLITS: tuple[str, str, str] = ("train", "valid", "test")
EVAL_SPLITS: tuple[str, str] = ("valid", "test")

# --- evaluation candidates: the strategies and their file names ------------------------------
STRATEGIES: tuple[str, ...] = ("uniform", "bm25-hard", "popular", "dense-hard")
DEFAULT_STRATEGY = "uniform"


def check_strategy(name: str) -> str:
    """``name`` if it is a candidate strategy, else a :class:`DataError` naming the choices."""
    if name not in STRATEGIES:
        raise DataError(f"unknown candidate strategy {name!r}; choose one of "
                        f"{', '.join(STRATEGIES)}")
    return name


def candidates_filename(split: str, strategy: str = DEFAULT_STRATEGY) -> str:
    """``candidates_test.parquet`` (uniform) or ``candidates_test.bm25-hard.parquet``."""
    check_strategy(strategy)
    suffix = "" if strategy == DEFAULT_STRATEGY else f".{strategy}"
    return f"candidates_{split}{suffix}.parquet"


def strategy_card_filename(strategy: str) -> str:
    """The settings file written beside a non-default strategy's candidates."""
    return f"candidates.{check_strategy(strategy)}.json"

SCHEMA_VERSION = 1

INTERACTIONS = pa.schema(
    [
        pa.field("user_id", pa.int32(), nullable=False),
        pa.field("item_id", pa.int32(), nullable=False),
        pa.field("behaviour", pa.string(), nullable=False),  # "rec" | "src"
        pa.field("query_id", pa.int32(), nullable=True),  # null for rec
        pa.field("timestamp", pa.int64(), nullable=False),  # seconds, ms, or the order
        pa.field("seq", pa.int32(), nullable=False),  # per-user chronological event index
        pa.field("split", pa.string(), nullable=False),  # "train" | "valid" | "test"
    ]
)

ITEMS = pa.schema(
    [
        pa.field("item_id", pa.int32(), nullable=False),
        pa.field("orig_id", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("category", pa.string(), nullable=False),  # levels joined by " > "
    ]
)

QUERIES = pa.schema(
    [
        pa.field("query_id", pa.int32(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
    ]
)

USERS = pa.schema(
    [
        pa.field("user_id", pa.int32(), nullable=False),
        pa.field("orig_id", pa.string(), nullable=False),
    ]
)

CANDIDATES = pa.schema(
    [
        pa.field("instance_id", pa.int32(), nullable=False),
        pa.field("user_id", pa.int32(), nullable=False),
        pa.field("task", pa.string(), nullable=False),
        pa.field("query_id", pa.int32(), nullable=True),
        pa.field("seq", pa.int32(), nullable=False),  # history = the user's rows with seq < this
        pa.field("target_item", pa.int32(), nullable=False),
        pa.field("candidates", pa.list_(pa.int32()), nullable=False),  # shuffled, target inside
        pa.field("target_pos", pa.int16(), nullable=False),  # index of the target in candidates
    ]
)

CATEGORY_SEP = " > "
