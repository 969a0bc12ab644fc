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

This module also owns the two other rules of writing: **one writer** per output
(:func:`writer_lock`: a lock beside the folder or file, refused with the holder's pid and
host, a stale one taken over with a note) and **a full disk** (:func:`no_space_is_error`,
:func:`write_atomic`: one line naming the path, nothing half-written kept).
"""

from __future__ import annotations

import errno
import fnmatch
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

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
    # a staging folder of a killed write (``.data.tmp-…``), the writer lock of an entry
    return name.startswith(".") and any(name.startswith(f".{k}.tmp")
                                        or name == f".{k}{LOCK_SUFFIX}" for k in known)


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


# --- one writer per output: the lock beside it -----------------------------------------------
#
# ``gensr train``, ``data prepare``, ``pretrain-cf`` (and ``compare``/``quickstart`` through
# them) hold a lock on what they write for as long as they write it: the file
# ``.NAME.gensr-lock`` beside the folder or file ``NAME`` (beside, not inside: a data
# directory is renamed into place and a run directory may be cleared while the lock is held).
# It holds the writer's pid, host, command and start time, and an exclusive ``flock`` held
# while the process lives: a second writer is refused naming the first; a lock whose process
# is gone (killed, crashed: the kernel dropped its flock) is taken over with a note.

LOCK_SUFFIX = ".gensr-lock"
_HELD: dict[str, list[Any]] = {}  # lock path -> [fd, depth, folders made for it]


def lock_path(target: str | Path) -> Path:
    """The lock file of the folder or file ``target``: ``.NAME.gensr-lock`` beside it."""
    target = Path(os.path.abspath(target))
    return target.parent / f".{target.name}{LOCK_SUFFIX}"


def _holder_doc() -> dict[str, Any]:
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    if program in ("-c", "__main__.py", "gensr", "gensr.exe"):  # `gensr`, `python -m gensr.cli`
        program = "gensr"
    command = " ".join([program, *sys.argv[1:]])
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "command": command if len(command) <= 120 else command[:119] + "…",
            "since": time.strftime("%Y-%m-%d %H:%M:%S")}


def _read_holder(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8") or "null")
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def describe_holder(doc: dict[str, Any] | None) -> str:
    """``pid 4242 on host vm (gensr train …, since …)`` for a lock's holder."""
    if not doc:
        return "a process that left no record"
    extra = ", ".join(str(doc[k]) if k == "command" else f"since {doc[k]}"
                      for k in ("command", "since") if doc.get(k))
    return f"pid {doc.get('pid', '?')} on host {doc.get('host', '?')}" + (
        f" ({extra})" if extra else "")


def _alive(doc: dict[str, Any] | None) -> bool:
    """Whether a lock's holder may still run (no flock to ask: pid check on this host)."""
    if not doc:
        return False
    if doc.get("host") != socket.gethostname():
        return True  # another machine: cannot tell, assume so
    try:
        os.kill(int(doc.get("pid", -1)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OverflowError):
        return True
    return True


def lock_holder(target: str | Path) -> dict[str, Any] | None:
    """The record of the live writer holding ``target``'s lock, or None (no lock, or one
    whose process is gone)."""
    path = lock_path(target)
    if not path.exists():
        return None
    if str(path) in _HELD:
        return _holder_doc()
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        doc = _read_holder(path)
        return doc if _alive(doc) else None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_holder(path) or {}
    except OSError:
        doc = _read_holder(path)
        return doc if _alive(doc) else None
    finally:
        os.close(fd)
    return None


def _make_parents(folder: Path, error: type[GensrError]) -> list[Path]:
    made: list[Path] = []
    for parent in [*reversed(folder.parents), folder]:
        if not parent.exists():
            try:
                parent.mkdir()
            except FileExistsError:
                continue
            except OSError as err:
                raise error(f"cannot create {parent}: {err.strerror or type(err).__name__}"
                            ) from None
            made.append(parent)
    return made


def _flock(fd: int) -> bool | None:
    """Try an exclusive flock: True got it, False another holds it, None not supported."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:  # a filesystem without flock
        return None
    return True


def acquire_lock(target: str | Path, error: type[GensrError], *, what: str = "",
                 option: str = "--out", log: Callable[[str], None] | None = None) -> Path:
    """Take the writer lock of ``target`` (see above); re-entrant within a process. Raises
    ``error`` naming the holder when another live process has it."""
    path = lock_path(target)
    key = str(path)
    if key in _HELD:
        _HELD[key][1] += 1
        return path
    made = _make_parents(path.parent, error)
    label = f"{what} {target}" if what else str(target)
    for _ in range(5):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            _remove_made(made)
            raise no_space(path, error, err) if is_no_space(err) else error(
                f"cannot create the lock {path}: {err.strerror or type(err).__name__}"
            ) from None
        got = _flock(fd)
        previous = _read_holder(path)
        if got is False or (got is None and previous and _alive(previous)
                            and previous.get("pid") != os.getpid()):
            os.close(fd)
            _remove_made(made)
            raise error(f"{label} is being written by another gensr: {describe_holder(previous)}"
                        f"; wait for it to end, or choose another {option}")
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:  # released and removed meanwhile: take a fresh file
            same = False
        if same:
            break
        os.close(fd)
    else:  # pragma: no cover - five releases in a row
        _remove_made(made)
        raise error(f"cannot take the lock {path}: it keeps changing")
    if previous:
        (log or note)(f"note: {label}: took over the lock {path.name} of "
                       f"{describe_holder(previous)}: that process is gone")
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(_holder_doc()) + "\n").encode(), 0)
    except OSError as err:
        _release_fd(path, fd, made)
        raise no_space(path, error, err) if is_no_space(err) else error(
            f"cannot write the lock {path}: {err.strerror or type(err).__name__}") from None
    _HELD[key] = [fd, 1, made]
    return path


def release_lock(target: str | Path) -> None:
    """Give back a lock taken with :func:`acquire_lock` (the last release removes it)."""
    key = str(lock_path(target))
    held = _HELD.get(key)
    if held is None:
        return
    held[1] -= 1
    if held[1] == 0:
        del _HELD[key]
        _release_fd(Path(key), held[0], held[2])


def _release_fd(path: Path, fd: int, made: list[Path]) -> None:
    try:
        path.unlink()  # while the flock is held: a waiting taker then sees a new inode
    except FileNotFoundError:
        pass
    finally:
        os.close(fd)
    _remove_made(made)


def _remove_made(made: list[Path]) -> None:
    """Remove the folders made for a lock, when nothing else was put in them."""
    for folder in reversed(made):
        try:
            folder.rmdir()
        except OSError:
            return


def note(text: str) -> None:
    """Print one ``note:`` line (on stderr): something gensr did on its own and says so."""
    print(text if text.startswith("note:") else f"note: {text}", file=sys.stderr)


@contextmanager
def writer_lock(target: str | Path, error: type[GensrError], *, what: str = "",
                option: str = "--out", log: Callable[[str], None] | None = None
                ) -> Iterator[Path]:
    """``with writer_lock(out, RunError, what="run directory"):`` one writer of ``out``."""
    path = acquire_lock(target, error, what=what, option=option, log=log)
    try:
        yield path
    finally:
        release_lock(target)


# --- a full disk: one line, nothing half-written ---------------------------------------------

def is_no_space(err: BaseException | None) -> bool:
    """Whether ``err`` (or what it was raised from) is a full disk: ``ENOSPC``, or a library's
    wording of it (pyarrow, safetensors and torch's writer wrap the OS error)."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            return True
        text = str(err).lower()
        if "no space left on device" in text or "os error 28" in text or "errno 28" in text:
            return True
        err = err.__cause__ or err.__context__
    return False


def no_space(path: str | Path, error: type[GensrError], err: BaseException | None = None,
             after: str = "free some space and run the command again") -> GensrError:
    """The one-line error for a full disk while writing ``path``."""
    name = getattr(err, "filename", None)
    where = f"{path} (writing {name})" if name and str(name) != str(path) else str(path)
    return error(f"{where}: no space left on device; {after}")


@contextmanager
def no_space_is_error(path: str | Path, error: type[GensrError],
                      cleanup: Callable[[], None] | None = None,
                      after: str = "free some space and run the command again"
                      ) -> Iterator[None]:
    """Turn a full disk inside the block into ``no_space(path, error)`` after ``cleanup()``
    (which removes what was half-written); every other error passes unchanged."""
    try:
        yield
    except GensrError:
        raise
    except Exception as err:
        if not is_no_space(err):
            raise
        if cleanup is not None:
            cleanup()
        raise no_space(path, error, err, after) from None


def write_atomic(path: str | Path, content: str | bytes | Callable[[Path], None],
                 error: type[GensrError] | None) -> Path:
    """Write ``path`` through a temporary file beside it renamed into place: a reader sees
    the old file or the new one, never half of one; on a full disk (one-line ``error``; with
    ``error`` None the library's error passes unchanged, for a caller that words it) or any
    other failure the temporary file is removed. ``content``: text, bytes, or
    ``write(tmp_path)``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")

    def remove() -> None:
        tmp.unlink(missing_ok=True)

    try:
        with no_space_is_error(path, error, remove) if error is not None else nullcontext():
            if isinstance(content, str):
                tmp.write_text(content, encoding="utf-8")
            elif isinstance(content, bytes):
                tmp.write_bytes(content)
            else:
                content(tmp)
            os.replace(tmp, path)
    except BaseException:
        remove()
        raise
    return path


def write_folder_atomic(folder: str | Path, write: Callable[[Path], None],
                        error: type[GensrError] | None) -> Path:
    """:func:`write_atomic` for a library that writes a whole folder (a tokenizer's or a
    config's ``save_pretrained``): ``write(tmp_folder)`` into a temporary folder beside
    ``folder``, then each file it wrote renamed into ``folder``, so every file there is the
    old one or the new one, never half of one. The temporary folder is always removed."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with no_space_is_error(folder, error) if error is not None else nullcontext():
            tmp.mkdir()
            write(tmp)
            for src in sorted(p for p in tmp.rglob("*") if p.is_file()):
                dest = folder / src.relative_to(tmp)
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(src, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
