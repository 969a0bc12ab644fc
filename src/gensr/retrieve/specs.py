"""Retriever specs (``--retriever SPEC``) and the set of retrievers a ranker serves with.

A spec is ``[TASK:]NAME[=PATH]``, or several joined by ``+`` (their union):

==========================  ==================================================================
``lightgcn``                the reranker run's CF table (``RUN_DIR/cf.safetensors``): user
                            vector · item vectors; without a user, the history's mean vector
``lightgcn=PATH``           the same with another CF table (a ``.safetensors`` file or a run
                            directory holding ``cf.safetensors``)
``lightgcn-history[=PATH]`` always the mean CF vector of the history's items (no user needed)
``bm25``                    BM25 over item text (search; only items matching the query)
``pop``                     training-split popularity (per task)
``NAME=RUN_DIR``            a trained run that ranks every item, e.g. ``sasrec=runs/sasrec``
                            (recommendation), ``tem=runs/tem`` (search)
``A+B``                     the union of A and B, fused by reciprocal rank
``rec:SPEC`` / ``src:SPEC`` SPEC for that task only
==========================  ==================================================================
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from gensr.data.dataset import SRData
from gensr.errors import ConfigError
from gensr.retrieve.base import Retriever
from gensr.retrieve.index import INDEX_KINDS, HNSWSettings

CF_NAMES = ("lightgcn", "lightgcn-history")
BUILT_NAMES = ("bm25", "pop")  # need no training: built from the data
TASKS = ("rec", "src")


@dataclass(frozen=True)
class Spec:
    """One parsed retriever spec (``parts`` for a union)."""

    text: str
    name: str
    path: str | None = None
    task: str | None = None
    parts: tuple[Spec, ...] = ()


def parse_spec(text: str) -> Spec:
    """Parse ``[TASK:]NAME[=PATH][+…]`` (see the module docstring)."""
    raw = text.strip()
    task = None
    head, sep, rest = raw.partition(":")
    if sep and head in TASKS:
        task, raw = head, rest.strip()
    if not raw:
        raise ConfigError(f"empty retriever spec {text!r}")
    pieces = [p.strip() for p in raw.split("+")]
    if len(pieces) > 1:
        parts = tuple(_one(p, text) for p in pieces)
        return Spec(text, "+".join(p.name for p in parts), None, task, parts)
    one = _one(pieces[0], text)
    return Spec(text, one.name, one.path, task)


def _one(piece: str, text: str) -> Spec:
    name, sep, path = piece.partition("=")
    name = name.strip()
    if not name:
        raise ConfigError(f"retriever spec {text!r}: a part has no name")
    if sep and not path.strip():
        raise ConfigError(f"retriever spec {text!r}: {name}= needs a path")
    return Spec(piece, name, path.strip() or None)


def build_retriever(spec: str | Spec, data: SRData, *, run_dir: str | Path | None = None,
                    device: torch.device | str | None = None, index: str = "exact",
                    hnsw: HNSWSettings | None = None, cf_his_len: int = 50) -> Retriever:
    """The retriever a spec names, for ``data``; ``run_dir`` is the reranker's run (where a
    bare ``lightgcn`` finds its CF table); ``index`` ``exact`` or ``hnsw`` (dense
    retrievers: an approximate index saved beside the vectors' run)."""
    if index not in INDEX_KINDS:
        raise ConfigError(f"index must be one of {list(INDEX_KINDS)}, got {index!r}")
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    from gensr.tensor import pick_device

    dev = torch.device(device) if device is not None else pick_device(None)
    if spec.parts:
        from gensr.retrieve.retrievers import UnionRetriever

        names = [p.name for p in spec.parts]
        if len(set(names)) != len(names):
            raise ConfigError(f"retriever spec {spec.text!r} names a part twice")
        parts = [_build_one(p, data, run_dir, dev, index, hnsw, cf_his_len)
                 for p in spec.parts]
        retriever: Retriever = UnionRetriever(spec.name, parts)
    else:
        retriever = _build_one(spec, data, run_dir, dev, index, hnsw, cf_his_len)
    if spec.task is not None:
        if spec.task not in retriever.tasks:
            raise ConfigError(f"retriever {spec.name} does not serve {spec.task} "
                              f"(it serves {', '.join(retriever.tasks)})")
        retriever.tasks = (spec.task,)
    return retriever


def _build_one(spec: Spec, data: SRData, run_dir: str | Path | None, device: torch.device,
               index: str, hnsw: HNSWSettings | None, cf_his_len: int) -> Retriever:
    from gensr.models.registry import MODELS, model_class
    from gensr.retrieve import retrievers as r

    name = spec.name
    if name in CF_NAMES:
        from gensr.cf.table import CFTable

        path = _cf_path(spec, run_dir)
        table = CFTable.load(path, data)
        out = r.CFRetriever(name, table.item, table.user, dict(data.query_index),
                            mode="history" if name == "lightgcn-history" else "user",
                            max_his_len=cf_his_len).to(device)
        if index != "exact":
            out.use_index(index, path.parent / "retrieval" / f"{name}.hnsw.faiss", hnsw)
        return out
    if name not in MODELS:
        known = ", ".join([*CF_NAMES, *BUILT_NAMES, "NAME=RUN_DIR"])
        raise ConfigError(f"unknown retriever {name!r}; available: {known}")
    cls = model_class(name)
    if spec.path is None:
        if cls.trainable:
            raise ConfigError(f"the {name} retriever needs a trained run: {name}=RUN_DIR")
        model = cls(cls.config_class(), data).to(device).eval()
        source = None
    else:
        from gensr.models.base import read_model_card
        from gensr.runs import load_run

        source = Path(spec.path)
        card = read_model_card(source)
        if card["model"] != name:
            raise ConfigError(f"retriever spec {spec.text!r}: {source} is a {card['model']} "
                              f"run, not {name}")
        model, _ = load_run(source, data, device)
    if model.supports_embeddings:
        out = r.EmbeddingRetriever(name, model, source)
        if index != "exact":
            where = (source if source is not None else Path(run_dir or ".")) / "retrieval"
            out.use_index(index, where / f"{name}.hnsw.faiss", hnsw)
        return out
    if not model.supports_full_ranking:
        raise ConfigError(f"{name} cannot score every item, so it cannot retrieve "
                          f"(retrievers: {', '.join([*CF_NAMES, *BUILT_NAMES])}, or a run "
                          "of sasrec, tem, lightgcn)")
    return r.ScoringRetriever(name, model, positive_only=name == "bm25", run_dir=source)


def _cf_path(spec: Spec, run_dir: str | Path | None) -> Path:
    from gensr.models.base import CF_FILE

    if spec.path is not None:
        path = Path(spec.path)
        if path.is_dir():
            path = path / CF_FILE
        if not path.is_file():
            raise ConfigError(f"retriever spec {spec.text!r}: no CF table at {path}")
        return path
    if run_dir is not None and (Path(run_dir) / CF_FILE).is_file():
        return Path(run_dir) / CF_FILE
    where = f"{run_dir} holds no {CF_FILE}" if run_dir is not None else "no run directory"
    raise ConfigError(f"the {spec.name} retriever needs a CF table ({where}): give "
                      f"{spec.name}=PATH (a table from `gensr pretrain-cf`)")


class RetrieverSet:
    """The retrievers a ranker can use, in order: for each task the first that serves it is
    the default; a request may name another (``retriever``)."""

    def __init__(self, retrievers: Sequence[Retriever]) -> None:
        names = [r.name for r in retrievers]
        dup = [n for n in dict.fromkeys(names) if names.count(n) > 1]
        if dup:
            raise ConfigError(f"retriever {dup[0]!r} given twice")
        self.retrievers = list(retrievers)

    def __iter__(self):
        return iter(self.retrievers)

    def __len__(self) -> int:
        return len(self.retrievers)

    def names(self, task: str | None = None) -> list[str]:
        return [r.name for r in self.retrievers if task is None or task in r.tasks]

    def get(self, task: str, name: str | None = None) -> Retriever | None:
        """The retriever for ``task``: the one called ``name``, or the first serving it."""
        for r in self.retrievers:
            if task in r.tasks and (name is None or r.name == name):
                return r
        return None

    def describe(self) -> list[dict]:
        return [{**r.describe(), "default_for": [t for t in r.tasks if self.get(t) is r]}
                for r in self.retrievers]


def default_specs(tasks: Sequence[str], run_dir: str | Path | None) -> list[str]:
    """What serves a run's tasks when no ``--retriever`` is given: recommendation from the
    run's CF table (``lightgcn``) when it has one, search from ``bm25``."""
    from gensr.models.base import CF_FILE

    out = []
    if "rec" in tasks and run_dir is not None and (Path(run_dir) / CF_FILE).is_file():
        out.append("lightgcn")
    if "src" in tasks:
        out.append("bm25")
    return out
