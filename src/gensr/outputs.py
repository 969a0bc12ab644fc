"""Folders gensr writes, the marker that says so, and the one rule for deleting a folder.

Every folder a command makes (``data prepare``'s data directory, ``train``'s run directory,
``quickstart``'s output) holds a small marker file, :data:`MARKER` (``.gensr``: JSON with the
folder's kind and the gensr version). gensr deletes or replaces a folder only when

1. it holds the marker of the expected kind (a data directory is never deleted as a run);
   data and quickstart folders may moreover hold only the files gensr writes there (a file
   you added stops ``--overwrite``/``--fresh``), and
2. it holds none of the command's inputs: it is not the input, not a folder above it and
   not inside an input folder.

Folders written before the marker existed count as gensr's when they hold only gensr's file
names and the folder's own file (``meta.json`` of a data directory, ``results.json`` or
``data/`` of a quickstart folder); the marker is added when gensr next writes there.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from gensr.errors import GensrError

MARKER = ".gensr"
KINDS = ("data", "run", "quickstart")

# what gensr writes in each kind of folder (None: anything, the marker alone decides)
KNOWN: dict[str, frozenset[str] | None] = {
    "data": frozenset({
        "meta.json", "interactions.parquet", "items.parquet", "queries.parquet",
        "users.parquet", "candidates_valid.parquet", "candidates_test.parquet",
        "report.json", "report.md",
    }),
    "quickstart": frozenset({"data", "cf.safetensors", "cf.json", "gensr", "gensr.yaml",
                             "results.json",
                             "results.md"}),
    "run": None,
}
# name patterns of the other files gensr writes there: every candidate strategy's files
# (data/schema.py: candidates_{split}.{strategy}.parquet, candidates.{strategy}.json)
PATTERNS: dict[str, tuple[str, ...]] = {
    "data": ("candidates_valid.*.parquet", "candidates_test.*.parquet", "candidates.*.json"),
}
# the file that names a pre-marker folder of the kind
LEGACY_ANCHOR = {"data": ("meta.json",), "quickstart": ("results.json", "data")}
WHAT = {"data": "data directory (gensr data prepare)", "run": "run directory (gensr train)",
        "quickstart": "quickstart folder (gensr quickstart)"}


def write_marker(directory: str | Path, kind: str) -> None:
    """Mark ``directory`` as a folder gensr wrote, of ``kind`` (data | run | quickstart)."""
    import gensr

    if kind not in KINDS:
        raise ValueError(f"unknown output kind {kind!r}")
    path = Path(directory) / MARKER
    path.write_text(json.dumps({"kind": kind, "gensr": gensr.__version__}) + "\n")


def marker_kind(directory: str | Path) -> str | None:
    """The kind recorded in ``directory``'s marker; None without a (readable) marker."""
    path = Path(directory) / MARKER
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    kind = doc.get("kind") if isinstance(doc, dict) else None
    return kind if kind in KINDS else None


def _is_known(name: str, kind: str) -> bool:
    """Whether gensr writes an entry called ``name`` in a folder of ``kind``."""
    known = KNOWN[kind]
    if known is None or name == MARKER or name in known:
        return True
    if any(fnmatch.fnmatchcase(name, p) for p in PATTERNS.get(kind, ())):
        return True
    # a staging folder of a killed write (``.data.tmp-…``)
    return name.startswith(".") and any(name.startswith(f".{k}.tmp") for k in known)


def foreign_entries(directory: str | Path, kind: str) -> list[str]:
    """Entries of ``directory`` that gensr does not write in a folder of ``kind``."""
    if KNOWN[kind] is None:
        return []
    return sorted(p.name for p in Path(directory).iterdir() if not _is_known(p.name, kind))


def is_owned(directory: str | Path, kind: str) -> bool:
    """Whether gensr wrote ``directory`` as a folder of ``kind`` (see the module docstring)."""
    directory = Path(directory)
    if not directory.is_dir():
        return False
    found = marker_kind(directory)
    if found is not None:
        return found == kind and not foreign_entries(directory, kind)
    if (directory / MARKER).exists():  # a marker gensr cannot read: not trusted
        return False
    anchors = LEGACY_ANCHOR.get(kind, ())
    return (KNOWN[kind] is not None and any((directory / a).exists() for a in anchors)
            and not foreign_entries(directory, kind))


def is_empty_dir(path: str | Path) -> bool:
    """Whether ``path`` is a folder with nothing in it."""
    path = Path(path)
    return path.is_dir() and not any(path.iterdir())


def check_output_path(out: str | Path, error: type[GensrError], option: str = "--out") -> None:
    """Refuse an output folder that is a file or that cannot be created (one line, before any
    work): the first existing folder above it must be a writable folder."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise error(f"{option} {out} is a file, not a folder")
    above = out.absolute().parent
    while not above.exists():
        above = above.parent
    if not above.is_dir():
        raise error(f"{option} {out}: {above} is a file, not a folder")
    target = out if out.exists() else above
    if not os.access(target, os.W_OK | os.X_OK):
        raise error(f"{option} {out}: cannot write in {target} (permission denied)")


def make_dir(path: str | Path, error: type[GensrError]) -> Path:
    """``mkdir -p path``, with a one-line ``error`` when the system refuses it."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise error(f"cannot create {path}: {err.strerror or type(err).__name__}") from None
    return path


def check_not_input(out: str | Path, inputs: Mapping[str, str | Path | None],
                    error: type[GensrError], option: str = "--out") -> None:
    """Refuse an output that is one of ``inputs`` (label -> path), holds one, or lies inside
    an input folder."""
    target = Path(out).resolve()
    for label, path in inputs.items():
        if path is None:
            continue
        source = Path(path).resolve()
        if target == source:
            raise error(f"{option} {out} is the {label} itself: choose another {option}")
        if target in source.parents:
            raise error(f"{option} {out} holds the {label} {path}: choose an {option} that "
                        "is not above your input")
        if source.is_dir() and source in target.parents:
            raise error(f"{option} {out} is inside the {label} folder {path}: choose an "
                        f"{option} outside it")


def check_replaceable(directory: str | Path, kind: str, error: type[GensrError],
                      inputs: Mapping[str, str | Path | None] | None = None,
                      option: str = "--out") -> None:
    """Raise unless gensr may delete ``directory`` (a folder of ``kind`` that gensr wrote and
    that holds no input). An empty folder may always be replaced."""
    directory = Path(directory)
    check_not_input(directory, inputs or {}, error, option)
    if not directory.exists() or is_empty_dir(directory):
        return
    if is_owned(directory, kind):
        return
    found = marker_kind(directory)
    foreign = foreign_entries(directory, kind) if directory.is_dir() else []
    legacy = found is None and not (directory / MARKER).exists() and any(
        (directory / a).exists() for a in LEGACY_ANCHOR.get(kind, ()))
    if (found == kind or legacy) and foreign:
        why = f"it holds files gensr did not write there ({', '.join(foreign[:3])}" + (
            " …)" if len(foreign) > 3 else ")")
    elif found is not None:
        why = f"it is a {WHAT[found]}, not a {WHAT[kind]}"
    elif (directory / MARKER).exists():
        why = f"its {MARKER} marker is not one gensr wrote"
    else:
        why = f"gensr did not write it (no {MARKER} marker of a {WHAT[kind]})"
    raise error(f"refusing to delete {directory}: {why}; delete it yourself or choose "
                f"another {option}")


def remove_owned(directory: str | Path, kind: str, error: type[GensrError],
                 inputs: Mapping[str, str | Path | None] | None = None,
                 option: str = "--out") -> None:
    """Delete ``directory`` after :func:`check_replaceable` allowed it."""
    check_replaceable(directory, kind, error, inputs, option)
    if Path(directory).exists():
        shutil.rmtree(directory)
