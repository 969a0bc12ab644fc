"""``gensr data prepare SOURCE``: run an adapter and write the canonical data directory."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, fields
from importlib import import_module
from pathlib import Path
from typing import Any

from gensr.data.canonical import (
    RawLog,
    Report,
    SplitStrategy,
    check_negatives,
    check_output_dir,
    write_canonical,
)
from gensr.errors import DataError
from gensr.outputs import check_not_input, writer_lock


@dataclass(frozen=True)
class Source:
    """An adapter: how to read it and which split it uses by default."""

    read: Callable[..., tuple[RawLog, Report]]
    split: SplitStrategy
    needs_raw: bool = True
    doc: str = ""


def _synthetic(raw: Path | None, **options: Any) -> tuple[RawLog, Report]:
    from gensr.data.synthetic import SyntheticConfig, generate

    cfg = SyntheticConfig(**{k: v for k, v in options.items() if v is not None})
    return generate(cfg)


def _atomic(raw: Path, seed: int = 0, **_: Any) -> tuple[RawLog, Report]:
    from gensr.data.adapters.atomic import read_atomic

    return read_atomic(raw, seed=seed)


def _amazon(raw: Path, seed: int = 0, **options: Any) -> tuple[RawLog, Report]:
    from gensr.data.adapters.amazon import read_amazon

    return read_amazon(raw, seed=seed, **options)


def _kuaisar(raw: Path, **options: Any) -> tuple[RawLog, Report]:
    from gensr.data.adapters.kuaisar import read_kuaisar

    return read_kuaisar(raw, **options)


def _csv(raw: Path, **options: Any) -> tuple[RawLog, Report]:
    from gensr.data.adapters.csv import read_csv_logs

    return read_csv_logs(raw, **options)


SOURCES: dict[str, Source] = {
    "synthetic": Source(_synthetic, "loo", needs_raw=False,
                        doc="the embedded synthetic S&R world (no --raw)"),
    "amazon-atomic": Source(_atomic, "given", doc="RecBole/UniSRec atomic files"),
    "amazon": Source(_amazon, "loo", doc="raw Amazon reviews + metadata JSON(.gz), 2014/2018"),
    "kuaisar": Source(_kuaisar, "day", doc="raw KuaiSAR CSVs"),
    "csv": Source(_csv, "loo", doc="your own interactions.csv + items.csv"),
}


def adapter_options(source: str) -> list[str]:
    """The ``--option`` names the ``source`` adapter accepts."""
    if source == "synthetic":
        from gensr.data.synthetic import SyntheticConfig

        return [f.name for f in fields(SyntheticConfig)]
    module, func = {
        "amazon-atomic": ("gensr.data.adapters.atomic", "read_atomic"),
        "amazon": ("gensr.data.adapters.amazon", "read_amazon"),
        "kuaisar": ("gensr.data.adapters.kuaisar", "read_kuaisar"),
        "csv": ("gensr.data.adapters.csv", "read_csv_logs"),
    }[source]
    params = inspect.signature(getattr(import_module(module), func)).parameters
    return [name for name, p in params.items() if p.kind == p.KEYWORD_ONLY]


def _check_options(source: str, options: dict[str, Any]) -> None:
    valid = adapter_options(source)
    unknown = sorted(set(options) - set(valid) - {"seed"})
    if unknown:
        raise DataError(f"unknown --option {', '.join(unknown)} for source {source!r}; "
                        f"valid: {', '.join(valid)}")


def prepare(
    source: str,
    raw: str | Path | None,
    out: str | Path,
    *,
    seed: int = 0,
    split: SplitStrategy | None = None,
    n_negatives: int = 99,
    overwrite: bool = False,
    options: dict[str, Any] | None = None,
) -> tuple[Path, Report]:
    """Read ``raw`` with the ``source`` adapter and write the data directory ``out``."""
    if source not in SOURCES:
        raise DataError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    spec = SOURCES[source]
    if split is not None and split not in ("loo", "day", "given"):
        raise DataError(f"unknown split strategy {split!r} (use loo, day or given)")
    raw_path = Path(raw) if raw is not None else None
    if spec.needs_raw:
        if raw_path is None:
            raise DataError(f"source {source!r} needs --raw PATH")
        if not raw_path.exists():
            raise DataError(f"raw path {raw_path} does not exist")
    out = Path(out)
    # before any reading: never write over (or delete) an input, a file or a foreign folder
    check_not_input(out, {"raw input": raw_path}, DataError)
    check_output_dir(out, overwrite)
    check_negatives(n_negatives)
    options = dict(options or {})
    if source != "synthetic":
        options.setdefault("seed", seed)
    _check_options(source, options)
    with writer_lock(out, DataError, what="data directory"):  # one writer of --out
        log, report = spec.read(raw_path, **options)
        path = write_canonical(log, out, report, split=split or spec.split, seed=seed,
                               n_negatives=n_negatives, overwrite=overwrite)
    return path, report
