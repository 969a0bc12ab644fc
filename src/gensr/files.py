"""Reading the files gensr reads, or saying in one line which one is damaged.

One reader per format, each the one place that turns a truncated or overwritten file into a
one-line error naming the file and saying that it is damaged (never a parser's traceback):

* :func:`read_json` — ``meta.json``, ``run.json``, CF cards, caches;
* :func:`read_parquet` — the canonical data directory's tables;
* :func:`open_safetensors` — CF tables (``model.safetensors`` is read by
  :mod:`gensr.models.base` with the same words, :func:`gensr.errors.damaged`);
* :func:`check_csv_end` — raw CSV logs: a last line cut mid-row (fewer fields than the header,
  no line end) is a truncated file. A file cut exactly between two fields cannot be told
  from a complete one.

YAML (``--config`` files) is read by :func:`gensr.config.load_yaml`. A run directory's
model files go through these readers too (:mod:`gensr.models.base`: ``model.json``,
``model.safetensors``; :func:`gensr.models.gensr.backbone.load_run_tokenizer` and
``check_json_files``: the tokenizer's and backbone's JSON files), and a damaged token cache
(:mod:`gensr.models.gensr.tokens`) is built again after a ``note:`` in the same words.
The message has one shape everywhere (:func:`gensr.errors.damaged`): ``PATH: not valid
FORMAT (detail): the file is damaged`` plus, where the caller knows one, what to do about it.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gensr.errors import DAMAGED, DataError, GensrError, damaged

if TYPE_CHECKING:
    import polars as pl

def first_line(err: BaseException, limit: int = 120) -> str:
    """The first line of an exception's message (its type when it has none), shortened."""
    text = str(err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _read_text(path: Path, what: str, error: type[GensrError], hint: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise damaged(path, what, f"not UTF-8 text at byte {err.start}", error, hint) from None
    except FileNotFoundError:
        raise error(f"{path} does not exist") from None
    except OSError as err:
        raise error(f"{path}: cannot read it ({err.strerror or type(err).__name__})") from None


def read_json(path: str | Path, error: type[GensrError] = DataError, *,
              expect: type | None = dict, hint: str = "") -> Any:
    """A JSON file (an object unless ``expect`` says otherwise; None: anything)."""
    path = Path(path)
    text = _read_text(path, "JSON", error, hint)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise damaged(path, "JSON", f"{err.msg} at line {err.lineno} column {err.colno}",
                      error, hint) from None
    if expect is not None and not isinstance(doc, expect):
        raise error(f"{path}: expected a JSON {'object' if expect is dict else expect.__name__}"
                    f", got {type(doc).__name__}")
    return doc


def read_parquet(path: str | Path, error: type[GensrError] = DataError, *,
                 hint: str = "") -> pl.DataFrame:
    """A Parquet table (polars)."""
    import polars as pl

    path = Path(path)
    try:
        return pl.read_parquet(path)
    except FileNotFoundError:
        raise error(f"{path} does not exist") from None
    except (pl.exceptions.PolarsError, OSError, ValueError, RuntimeError) as err:
        raise damaged(path, "Parquet", first_line(err), error, hint) from None


def open_safetensors(path: str | Path, error: type[GensrError], hint: str = "") -> Any:
    """``safetensors.safe_open`` of ``path`` (a context manager), a damaged file refused."""
    from safetensors import safe_open

    try:
        return safe_open(str(path), framework="pt")
    except FileNotFoundError:
        raise error(f"{path} does not exist") from None
    except Exception as err:  # safetensors raises its own error types on bad files
        raise damaged(path, "safetensors", first_line(err), error, hint) from None


def check_csv_end(path: str | Path, sep: str = ",", error: type[GensrError] = DataError
                  ) -> None:
    """Refuse a CSV file whose last line ends mid-row: no line end and fewer fields than the
    header (what a copy cut short leaves). Reads only the first and last lines."""
    path = Path(path)
    with path.open("rb") as fh:
        header = fh.readline()
        size = fh.seek(0, io.SEEK_END)
        if size == 0 or size <= len(header):
            return
        fh.seek(max(len(header), size - (1 << 16)))
        tail = fh.read()
    if tail.endswith((b"\n", b"\r")):
        return
    last = tail.rsplit(b"\n", 1)[-1]
    try:
        fields = next(csv.reader([header.decode("utf-8", "replace").rstrip("\r\n")],
                                 delimiter=sep), [])
        got = next(csv.reader([last.decode("utf-8", "replace")], delimiter=sep), [])
    except csv.Error:
        return
    if 0 < len(got) < len(fields):
        with path.open("rb") as fh:
            line = sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b"")) + 1
        raise error(f"{path}, line {line}: the last line stops after {len(got)} of the "
                    f"header's {len(fields)} fields, without a line end: {DAMAGED} "
                    "(truncated?); copy it again")
