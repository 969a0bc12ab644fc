"""Hostile inputs (issue 14): data commands, configs and run directories.

Each case of :data:`CASES` makes one bad input in the test's folder and runs ``gensr`` on it
through its entry point in this process. It must exit with code 2 and end with one
``error:`` line that names the problem, print no traceback, and leave every file it could
reach as it was: a content snapshot of the test's folder and of the data directories it reads
is the same before and after (nothing left behind: no half-written ``--out``, no staging
folder; nothing deleted: the raw input and unrelated folders are intact; nothing executed: a
planted pickle's file does not appear).

The tests after :data:`CASES` pin what hostile inputs must *not* break: replacing gensr's own
folders, reading what a careless export writes (float timestamps, tab separators, every row
twice), runs killed before their first checkpoint, and splits that lack a task.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickle
import shutil
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from gensr.cli import main
from gensr.data.prepare import prepare
from gensr.outputs import MARKER, check_replaceable, is_owned, write_marker
from gensr.train import train_run
from test_adapter_kuaisar import build_log

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = ["model.hidden=16", "model.n_layers=1", "model.max_his_len=10", "progress=false",
         "batch_size=32"]


# --- running gensr and checking that nothing changed --------------------------------------

def _gensr(capsys, *args: object) -> tuple[int, str]:
    """``gensr ARGS`` in this process: (exit code, everything printed). An exception that
    escapes the entry point is returned as its traceback (exit code 1)."""
    capsys.readouterr()
    old_argv, sys.argv = sys.argv, ["gensr", *map(str, args)]
    escaped = ""
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
    except BaseException:  # noqa: BLE001 - exactly what a user would see as a crash
        code, escaped = 1, traceback.format_exc()
    finally:
        sys.argv = old_argv
    printed = capsys.readouterr()
    return code, printed.out + printed.err + escaped


def _snapshot(*roots: Path) -> dict[str, str]:
    """Every file and folder under ``roots``: path -> content hash ("dir" for folders)."""
    seen: dict[str, str] = {}
    for root in roots:
        if not root.exists():
            continue
        for path in sorted(root.rglob("*")):
            seen[str(path)] = ("dir" if path.is_dir() and not path.is_symlink()
                               else hashlib.sha1(path.read_bytes()).hexdigest())
    return seen


# --- tiny raw files in the real formats ---------------------------------------------------

N_ITEMS, N_USERS, PER_USER = 12, 6, 5
ITEMS = ["item,text,category"] + [f"I{n:02d},Thing {n} garden gadget,Home > Tools"
                                  for n in range(N_ITEMS)]


def _interactions(users: int = N_USERS, per_user: int = PER_USER, src: bool = True) -> list[str]:
    rows = ["user,item,timestamp,behaviour,query"]
    for u in range(users):
        for j in range(per_user):
            behaviour = "src" if src and j % 2 else "rec"
            query = f"garden gadget {j}" if behaviour == "src" else ""
            rows.append(f"u{u},I{(u + j) % N_ITEMS:02d},{1_700_000_000 + 3600 * j + 60 * u},"
                        f"{behaviour},{query}")
    return rows


def _write(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _set(lines: list[str], line: int, text: str) -> list[str]:
    """``lines`` with file line ``line`` (the header is line 1) replaced by ``text``."""
    out = list(lines)
    out[line - 1] = text
    return out


def _amazon(folder: Path, stamp: object = None, reviews_bytes: bytes | None = None,
            truncate: int = 0) -> Path:
    """A 2014-layout folder: 4 users x 4 reviews of 8 items, metadata with category paths."""
    folder.mkdir(parents=True, exist_ok=True)
    reviews = []
    for u in range(4):
        for j in range(4):
            reviews.append(json.dumps({"reviewerID": f"R{u}", "asin": f"A{(u + j) % 8}",
                                       "unixReviewTime": 1_400_000_000 + 86_400 * j,
                                       "reviewText": "nice puzzle toy", "summary": "fun"}))
    if stamp is not None:
        first = json.loads(reviews[0])
        first["unixReviewTime"] = stamp
        reviews[0] = json.dumps(first)
    data = reviews_bytes if reviews_bytes is not None else gzip.compress(
        ("\n".join(reviews) + "\n").encode())
    (folder / "reviews_Toys_5.json.gz").write_bytes(data[: len(data) - truncate])
    meta = [str({"asin": f"A{i}", "title": f"Puzzle {i}",
                 "categories": [["Toys & Games", "Puzzles"]]}) for i in range(8)]
    (folder / "meta_Toys.json.gz").write_bytes(gzip.compress(("\n".join(meta) + "\n").encode()))
    return folder


def _corrupt_gzip() -> bytes:
    good = gzip.compress(b'{"reviewerID": "R0", "asin": "A0", "unixReviewTime": 1}\n' * 40)
    return good[:10] + b"\xff" * 40 + good[50:]  # a valid header, a broken deflate stream


ATOMIC_TEXT = ["item_id:token\ttext:token_seq"] + [
    f"A{i:03d}\tThing {i} by Acme. Industrial & Scientific Lab Beakers. Acme. " for i in range(40)]


def _atomic(folder: Path, text: bytes | None = None, test_rows: bool = True,
            valid_only_user: bool = False) -> Path:
    """RecBole atomic files: 4 users with 6 purchases (train/valid/test), 40 items."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Lab.text").write_bytes(text if text is not None else
                                      ("\n".join(ATOMIC_TEXT) + "\n").encode())
    (folder / "Lab.item2index").write_text("".join(f"A{i:03d}\t{i}\n" for i in range(40)))
    header = "user_id:token\titem_id_list:token_seq\titem_id:token\n"
    train, valid, test = [header], [header], [header]
    for u in range(5 if valid_only_user else 4):
        seq = [u * 6 + j for j in range(6)]
        for k in range(1, len(seq) - 2):
            train.append(f"{u}\t{' '.join(map(str, seq[:k]))}\t{seq[k]}\n")
        valid.append(f"{u}\t{' '.join(map(str, seq[:-2]))}\t{seq[-2]}\n")
        if test_rows and u < 4:
            test.append(f"{u}\t{' '.join(map(str, seq[:-1]))}\t{seq[-1]}\n")
    (folder / "Lab.user2index").write_text("".join(f"U{u}\t{u}\n" for u in range(len(valid) - 1)))
    for name, rows in (("train", train), ("valid", valid), ("test", test)):
        (folder / f"Lab.{name}.inter").write_text("".join(rows))
    return folder


def _kuaisar(folder: Path, file: str, column: str, value: str) -> Path:
    """The KuaiSAR fixture of test_adapter_kuaisar with one value replaced (first data row)."""
    build_log().write(folder)
    path = folder / file
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    row = next(iter(__import__("csv").reader([lines[1]])))
    row[header.index(column)] = value
    lines[1] = ",".join(f'"{v}"' if "," in v else v for v in row)
    path.write_text("\n".join(lines) + "\n")
    return folder


# --- fixtures ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def template_run(tmp_path_factory, tiny_data_dir) -> Path:
    """A paused SASRec run (2 steps, a validation, a checkpoint) on the tiny data."""
    out = tmp_path_factory.mktemp("template") / "run"
    train_run(out, "sasrec", tiny_data_dir, sets=[*SMALL, "max_steps=4", "eval_every=2"],
              stop_after_steps=2, log=lambda _: None)
    assert (out / "last" / "checkpoint.pt").exists() and (out / "model.json").exists()
    return out


@pytest.fixture(scope="module")
def rec_only_data(tmp_path_factory) -> Path:
    """A data directory without a single search interaction (csv, rec rows only)."""
    root = tmp_path_factory.mktemp("reconly")
    _write(root / "raw" / "items.csv", ITEMS)
    _write(root / "raw" / "interactions.csv", _interactions(users=20, src=False))
    out, _ = prepare("csv", root / "raw", root / "data", n_negatives=3)
    return out


@dataclass
class Ctx:
    """What a case builds its input from: its own folder and the shared read-only data."""

    tmp: Path
    data: Path  # the tiny synthetic data directory (session)
    rec_data: Path  # rec-only data
    template: Path

    def csv(self, inter: Callable[[list[str]], list[str]] | None = None,
            items: Callable[[list[str]], list[str]] | None = None) -> Path:
        raw = self.tmp / "raw"
        _write(raw / "items.csv", items(ITEMS) if items else ITEMS)
        lines = _interactions()
        _write(raw / "interactions.csv", inter(lines) if inter else lines)
        return raw

    def prep(self, raw: Path | None = None, *extra: object, source: str = "csv") -> list:
        raw = raw if raw is not None else self.csv()
        return ["data", "prepare", source, "--raw", raw, "--out", self.tmp / "out",
                "--negatives", "3", *extra]

    def run(self) -> Path:
        return Path(shutil.copytree(self.template, self.tmp / "run"))

    def train(self, *sets: str, model: str = "sasrec") -> list:
        args: list = ["train", "--model", model, "--data", self.data, "--out",
                      self.tmp / "newrun"]
        for s in sets:
            args += ["--set", s]
        return args

    def resume(self, *extra: object) -> list:
        return ["train", "--out", self.run(), "--resume", *extra]


@pytest.fixture
def ctx(tmp_path, tiny_data_dir, rec_only_data, template_run) -> Ctx:
    return Ctx(tmp_path, tiny_data_dir, rec_only_data, template_run)


# --- the cases -----------------------------------------------------------------------------

class Plant:
    """A pickle that, when loaded, creates the file ``path`` (what a planted checkpoint does)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _plant(c: Ctx, how: str, name: str = "checkpoint.pt") -> list:
    run = c.run()
    target = run / "last" / name
    sentinel = c.tmp / "PLANT_RAN"
    payload = {"model": Plant(sentinel), "optimizer": {}, "scheduler": {}, "state": {}}
    if how == "pickle":
        target.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, target)
    return ["train", "--out", run, "--resume"]


def _edit_run(c: Ctx, name: str, content: bytes | str | Callable[[Path], None]) -> Path:
    run = c.run()
    path = run / name
    if callable(content):
        content(path)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return run


def _json_edit(change: Callable[[dict], object]) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        doc = json.loads(path.read_text())
        change(doc)
        path.write_text(json.dumps(doc))
    return edit


def _checkpoint_edit(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        saved = torch.load(path, weights_only=True)
        change(saved)
        torch.save(saved, path)
    return edit


def _wrong_shape(saved: dict) -> None:
    key = next(k for k, v in saved["model"].items() if v.dim() == 2)
    saved["model"][key] = torch.zeros(3, 3)


def _weights_wrong_shape(path: Path) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(path))
    key = next(k for k, v in state.items() if v.dim() == 2)
    state[key] = torch.zeros(3, 3)
    save_file(state, str(path))


def _foreign_data_dir(c: Ctx) -> list:
    out = c.tmp / "out"
    prepare("csv", c.csv(), out, n_negatives=3)
    (out / "notes.txt").write_text("my notes")
    return c.prep(None, "--overwrite")


def _marked(c: Ctx, kind: str | None, name: str = "out") -> Path:
    folder = c.tmp / name
    folder.mkdir()
    (folder / "keep.txt").write_text("precious")
    if kind == "garbage":
        (folder / MARKER).write_text("{not json")
    elif kind:
        write_marker(folder, kind)
    return folder


def _unwritable(c: Ctx) -> list:
    if os.geteuid() != 0:
        locked = c.tmp / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        out: Path | str = locked / "out"
    elif Path("/sys").is_dir():  # root may write anywhere but in /sys
        out = "/sys/gensr-hostile-test/out"
    else:
        pytest.skip("no folder to stand for an unwritable one")
    return ["data", "prepare", "synthetic", "--out", out, "--option", "n_users=40",
            "--option", "n_items=60", "--negatives", "3"]


def _no_valid_day(c: Ctx) -> Path:
    """A data directory split by day whose valid day (the one before the last) is empty."""
    rows = ["user,item,timestamp,behaviour,query"]
    for u in range(N_USERS):
        for j, day in enumerate((0, 1, 2, 4)):
            src = j % 2 == 1
            rows.append(f"u{u},I{(u + j) % N_ITEMS:02d},{1_700_006_400 + 86_400 * day + 60 * u},"
                        f"{'src' if src else 'rec'},{'garden gadget' if src else ''}")
    raw = c.tmp / "raw"
    _write(raw / "items.csv", ITEMS)
    _write(raw / "interactions.csv", rows)
    out, report = prepare("csv", raw, c.tmp / "days", split="day", n_negatives=3)
    assert any("the valid split has no rec or src" in n for n in report.notes)
    return out


def _compare_foreign(c: Ctx) -> list:
    seed = c.tmp / "cmp" / "sasrec" / "seed0"
    seed.mkdir(parents=True)
    (seed / "thesis.tex").write_text("do not delete")
    return ["compare", "--data", c.data, "--out", c.tmp / "cmp", "--models", "sasrec"]


@dataclass
class Case:
    id: str
    setup: Callable[[Ctx], list]
    expect: str | tuple[str, ...]


def _ms(lines):
    return _set(lines, 2, "u0,I00,1700000000000,rec,")


CASES = [
    # --- data prepare: the output folder, deletion, inputs ---------------------------------
    Case("overwrite-unrelated-folder", lambda c: (_marked(c, None), c.prep(None, "--overwrite"))[1],
         "refusing to delete"),
    Case("overwrite-folder-with-garbage-marker",
         lambda c: (_marked(c, "garbage"), c.prep(None, "--overwrite"))[1],
         "its .gensr marker is not one gensr wrote"),
    Case("overwrite-a-run-directory", lambda c: (_marked(c, "run"), c.prep(None, "--overwrite"))[1],
         "is a run directory"),
    Case("overwrite-data-dir-with-a-file-of-yours", _foreign_data_dir,
         "holds files gensr did not write there (notes.txt)"),
    Case("existing-out-without-overwrite",
         lambda c: (_marked(c, "data"), c.prep())[1], "exists and is not empty"),
    Case("out-is-the-raw-folder", lambda c: ["data", "prepare", "csv", "--raw", c.csv(), "--out",
                                             c.tmp / "raw", "--overwrite"],
         "is the raw input itself"),
    Case("out-is-a-parent-of-raw", lambda c: ["data", "prepare", "csv", "--raw", c.csv(),
                                              "--out", c.tmp, "--overwrite"],
         "holds the raw input"),
    Case("out-inside-raw", lambda c: ["data", "prepare", "csv", "--raw", c.csv(), "--out",
                                      c.tmp / "raw" / "prepared"],
         "is inside the raw input folder"),
    Case("out-is-a-file", lambda c: ["data", "prepare", "synthetic", "--out",
                                     c.csv() / "items.csv"], "is a file, not a folder"),
    Case("out-under-a-file", lambda c: ["data", "prepare", "synthetic", "--out",
                                        c.csv() / "items.csv" / "out"], "is a file, not a folder"),
    Case("out-under-an-unwritable-folder", _unwritable, ("cannot write", "cannot create")),
    Case("negatives-zero", lambda c: c.prep(None, "--negatives", "0"),
         "--negatives must be a positive integer"),
    Case("negatives-negative", lambda c: c.prep(None, "--negatives", "-4"),
         "--negatives must be a positive integer"),
    Case("negatives-more-than-the-catalogue", lambda c: c.prep(None, "--negatives", "50"),
         "use --negatives 5 (or fewer)"),
    Case("user-saw-every-item",
         lambda c: c.prep(c.csv(items=lambda i: i[:5],
                                inter=lambda r: [x for x in _interactions(per_user=4)
                                                 if x.split(",")[1] in
                                                 ("item", "I00", "I01", "I02", "I03")]),
                          "--negatives", "1"),
         "leaving none"),
    Case("unknown-source", lambda c: ["data", "prepare", "nope", "--out", c.tmp / "out"],
         "unknown source 'nope'"),
    Case("raw-missing", lambda c: ["data", "prepare", "csv", "--raw", c.tmp / "nothing",
                                   "--out", c.tmp / "out"], "does not exist"),
    Case("raw-is-a-file", lambda c: ["data", "prepare", "csv", "--raw", c.csv() / "items.csv",
                                     "--out", c.tmp / "out"], "expected a folder"),
    Case("unknown-split", lambda c: c.prep(None, "--split", "weekly"),
         "unknown split strategy 'weekly'"),
    Case("given-split-without-split-column", lambda c: c.prep(None, "--split", "given"),
         "needs a 'split' column"),
    Case("unknown-adapter-option", lambda c: c.prep(None, "--option", "bogus=1"),
         "unknown --option bogus"),
    Case("bad-separator-option", lambda c: c.prep(None, "--option", "sep=ab"),
         "option sep must be one character"),
    Case("min-user-zero", lambda c: c.prep(None, "--option", "min_user=0"),
         "min_user must be a positive integer"),
    # --- csv content ---------------------------------------------------------------------
    Case("timestamp-beyond-int64",
         lambda c: c.prep(c.csv(lambda r: _set(r, 2, "u0,I00,99999999999999999999,rec,"))),
         "line 2, column 'timestamp': timestamp is beyond the 64-bit integer range"),
    Case("timestamp-below-int64",
         lambda c: c.prep(c.csv(lambda r: _set(r, 3, "u0,I01,-99999999999999999999,src,q"))),
         "line 3, column 'timestamp': timestamp is beyond the 64-bit integer range"),
    Case("millisecond-timestamps-as-seconds", lambda c: c.prep(c.csv(_ms)),
         "it looks like milliseconds"),
    Case("fractional-timestamp",
         lambda c: c.prep(c.csv(lambda r: _set(r, 2, "u0,I00,1700000000.5,rec,"))),
         "timestamp must be integer Unix seconds or an ISO 8601 date-time, found "
         "'1700000000.5'"),
    Case("tab-separated-file",
         lambda c: c.prep(c.csv(lambda r: [x.replace(",", "\t") for x in r],
                                lambda i: [x.replace(",", "\t") for x in i])),
         "looks tab-separated: add --option sep=tab"),
    Case("semicolon-separated-file",
         lambda c: c.prep(c.csv(lambda r: [x.replace(",", ";") for x in r])),
         "looks ;-separated: add --option sep=;"),
    Case("duplicate-header-column",
         lambda c: c.prep(c.csv(lambda r: [r[0] + ",item"] + [x + ",I00" for x in r[1:]])),
         "the header names column 'item' twice (fields 2 and 6)"),
    Case("duplicate-header-column-items",
         lambda c: c.prep(c.csv(items=lambda i: ["item,text,text"] + [x + ",x" for x in i[1:]])),
         "names column 'text' twice"),
    Case("non-utf8-csv", lambda c: c.prep(
        (lambda raw: ((raw / "interactions.csv").write_bytes(
            (raw / "interactions.csv").read_bytes().replace(b"u0,", b"u\xff,")), raw)[1])(
                c.csv())), "invalid utf-8"),
    Case("empty-interactions-file", lambda c: c.prep(c.csv(lambda r: [""])),
         "interactions.csv: the file is empty"),
    Case("header-only", lambda c: c.prep(c.csv(lambda r: r[:1])), "no interactions in the file"),
    Case("ragged-row", lambda c: c.prep(c.csv(lambda r: _set(r, 4, r[3] + ",x,y"))),
         "line 4: cannot read the CSV: 7 fields where the header has 5"),
    Case("bad-behaviour", lambda c: c.prep(c.csv(lambda r: _set(r, 2, "u0,I00,1,buy,"))),
         "behaviour must be 'rec' or 'src', found 'buy'"),
    Case("search-without-query", lambda c: c.prep(c.csv(lambda r: _set(r, 3, "u0,I01,5,src,"))),
         "a 'src' (search) row needs a query"),
    Case("unknown-item", lambda c: c.prep(c.csv(lambda r: _set(r, 2, "u0,ZZZ,5,rec,"))),
         "item 'ZZZ' is not in items.csv"),
    Case("missing-column", lambda c: c.prep(c.csv(lambda r: _set(r, 1, "user,item,time,"
                                                                 "behaviour,query"))),
         "missing column(s) timestamp"),
    Case("items-file-missing", lambda c: ((c.csv() / "items.csv").unlink(),
                                          c.prep(c.tmp / "raw"))[1],
         "items.csv: file is missing"),
    Case("duplicate-item-id-other-text",
         lambda c: c.prep(c.csv(items=lambda i: i + ["I03,Another text,Home"])),
         "duplicate item id 'I03'"),
    Case("no-training-rows", lambda c: c.prep(c.csv(lambda r: _interactions(per_user=2))),
         "the loo split leaves no training interactions"),
    # --- amazon ----------------------------------------------------------------------------
    Case("corrupt-gzip", lambda c: c.prep(_amazon(c.tmp / "raw", reviews_bytes=_corrupt_gzip()),
                                          source="amazon"),
         "corrupt gzip data"),
    Case("truncated-gzip", lambda c: c.prep(_amazon(c.tmp / "raw", truncate=20),
                                            source="amazon"), "cannot read the file"),
    Case("amazon-timestamp-beyond-int64",
         lambda c: c.prep(_amazon(c.tmp / "raw", stamp=10**20), "--option", "min_user=1",
                          "--option", "min_item=1", source="amazon"),
         "unixReviewTime must be Unix seconds, got 100000000000000000000"),
    Case("amazon-milliseconds",
         lambda c: c.prep(_amazon(c.tmp / "raw", stamp=1_400_000_000_000), "--option",
                          "min_user=1", source="amazon"), "(after the year 5000: milliseconds?)"),
    Case("amazon-line-not-json",
         lambda c: c.prep(_amazon(c.tmp / "raw", reviews_bytes=gzip.compress(b"{oops\n")),
                          source="amazon"), "line 1: not valid JSON"),
    # --- amazon-atomic ---------------------------------------------------------------------
    Case("atomic-text-not-utf8",
         lambda c: c.prep(_atomic(c.tmp / "raw", text=("\n".join(ATOMIC_TEXT[:5]) + "\n")
                                  .encode().replace(b"Thing 2", b"Thing \xe9 2")),
                          source="amazon-atomic"),
         "Lab.text, line 4: not UTF-8 text"),
    Case("atomic-no-test-rows", lambda c: c.prep(_atomic(c.tmp / "raw", test_rows=False),
                                                 source="amazon-atomic"),
         "no user has a test row"),
    Case("atomic-bad-header",
         lambda c: c.prep(_atomic(c.tmp / "raw", text=b"item\ttext\nA000\tx\n"),
                          source="amazon-atomic"), "header must be"),
    # --- kuaisar ---------------------------------------------------------------------------
    Case("kuaisar-timestamp-beyond-int64",
         lambda c: c.prep(_kuaisar(c.tmp / "raw", "rec_inter.csv", "timestamp", "1e20"),
                          source="kuaisar"),
         "line 2, column 'timestamp': timestamp must be a Unix time in milliseconds"),
    Case("kuaisar-search-timestamp-beyond-int64",
         lambda c: c.prep(_kuaisar(c.tmp / "raw", "src_inter.csv", "search_session_timestamp",
                                   "99999999999999999999"), source="kuaisar"),
         "search_session_timestamp must be a Unix time in milliseconds"),
    # --- configs: refused before anything is built ----------------------------------------
    Case("lr-nan", lambda c: c.train("lr=NaN"), "train.lr must be a finite number"),
    Case("lr-inf", lambda c: c.train("lr=.inf"), "train.lr must be a finite number"),
    Case("lr-negative", lambda c: c.train("lr=-1"), "train.lr must be >= 0"),
    Case("weight-decay-nan", lambda c: c.train("weight_decay=nan"),
         "train.weight_decay must be a finite number"),
    Case("grad-clip-inf", lambda c: c.train("grad_clip=.inf"),
         "train.grad_clip must be a finite number"),
    Case("dropout-two", lambda c: c.train("model.dropout=2.0"),
         "model.dropout must be in [0, 1), got 2.0"),
    Case("dropout-negative", lambda c: c.train("dropout=-0.1"), "model.dropout must be in [0, 1)"),
    Case("max-his-len-negative", lambda c: c.train("max_his_len=-5"),
         "model.max_his_len must be >= 1, got -5"),
    Case("hidden-zero", lambda c: c.train("hidden=0"), "model.hidden must be >= 1, got 0"),
    Case("heads-zero", lambda c: c.train("n_heads=0"), "model.n_heads must be >= 1"),
    Case("hidden-not-a-multiple-of-heads", lambda c: c.train("hidden=30", "n_heads=4"),
         "model.hidden (30) must be a multiple of model.n_heads (4)"),
    Case("init-std-zero", lambda c: c.train("model.init_std=0"), "model.init_std must be > 0"),
    Case("layers-negative", lambda c: c.train("n_layers=-1"), "model.n_layers must be >= 0"),
    Case("batch-size-zero", lambda c: c.train("batch_size=0"), "train.batch_size must be >= 1"),
    Case("train-negatives-zero", lambda c: c.train("train.n_negatives=0"),
         "train.n_negatives must be >= 1"),
    Case("eval-fraction-zero", lambda c: c.train("eval_fraction=0"),
         "train.eval_fraction must be in (0, 1]"),
    Case("eval-fraction-nan", lambda c: c.train("eval_fraction=nan"), "train.eval_fraction"),
    Case("max-steps-zero", lambda c: c.train("max_steps=0"), "train.max_steps must be >= 1"),
    Case("patience-negative", lambda c: c.train("patience=-2"), "train.patience must be >= 0"),
    Case("bad-metric", lambda c: c.train("metric=mean/N@11"), "train.metric 'mean/N@11'"),
    Case("unknown-setting", lambda c: c.train("lerning_rate=1"),
         "unknown setting 'lerning_rate'"),
    Case("set-without-equals", lambda c: c.train("hidden"), "--set expects key=value"),
    Case("set-value-not-yaml", lambda c: c.train("tower_dims=[64,"),
         "--set tower_dims: cannot read the value"),
    Case("bad-precision", lambda c: c.train("precision=fp16"), "'fp16' is not one of"),
    Case("hidden-not-an-integer", lambda c: c.train("hidden=1.5"), "expected an integer"),
    Case("unknown-device", lambda c: c.train("device=tpu"), "unknown device 'tpu'"),
    Case("gensr-tau-zero", lambda c: c.train("model.tau=0", model="gensr"),
         "model.tau must be > 0"),
    Case("gensr-lam-negative", lambda c: c.train("lam=-1", model="gensr"),
         "model.lam must be >= 0"),
    Case("gensr-vocab-zero", lambda c: c.train("scratch_vocab_size=0", model="gensr"),
         "model.scratch_vocab_size must be >= 1"),
    Case("gensr-lora-dropout", lambda c: c.train("lora_dropout=1.0", model="gensr"),
         "model.lora_dropout must be in [0, 1)"),
    Case("unisar-tower-width-zero", lambda c: c.train("tower_dims=[64, 0]", model="unisar"),
         "model.tower_dims must be >= 1, got 0"),
    Case("disc-alpha-above-one", lambda c: c.train("alpha=1.5", model="disc"),
         "model.alpha must be in [0, 1]"),
    Case("config-not-yaml", lambda c: ((c.tmp / "c.yaml").write_text("model: [\n"),
                                       [*c.train(), "--config", c.tmp / "c.yaml"])[1],
         "not valid YAML"),
    Case("config-not-a-mapping", lambda c: ((c.tmp / "c.yaml").write_text("- 1\n"),
                                            [*c.train(), "--config", c.tmp / "c.yaml"])[1],
         "expected a mapping at the top level"),
    Case("config-unknown-section", lambda c: ((c.tmp / "c.yaml").write_text("modle: {}\n"),
                                              [*c.train(), "--config", c.tmp / "c.yaml"])[1],
         "unknown top-level key(s) ['modle']"),
    Case("config-value-out-of-range",
         lambda c: ((c.tmp / "c.yaml").write_text("model:\n  dropout: 7\n"),
                    [*c.train(), "--config", c.tmp / "c.yaml"])[1], "model.dropout must be in"),
    Case("cf-table-missing", lambda c: [*c.train(model="gensr"), "--cf", c.tmp / "cf.safetensors"],
         "does not exist"),
    # --- run directories: train ------------------------------------------------------------
    Case("train-out-is-a-file", lambda c: ["train", "--model", "sasrec", "--data", c.data,
                                           "--out", c.csv() / "items.csv"],
         "is a file, not a folder"),
    Case("train-out-unrelated-folder", lambda c: ["train", "--model", "sasrec", "--data", c.data,
                                                  "--out", _marked(c, None)],
         "exists and is not empty"),
    Case("train-out-holds-a-checkpoint", lambda c: ["train", "--model", "sasrec", "--data",
                                                    c.data, "--out", c.run()],
         "it has a checkpoint: add --resume"),
    Case("resume-nothing", lambda c: ["train", "--out", c.tmp / "none", "--resume"],
         "no checkpoint to resume"),
    Case("resume-unrelated-folder", lambda c: ["train", "--out", _marked(c, None), "--resume"],
         "no checkpoint to resume"),
    Case("run-json-not-json", lambda c: ["train", "--resume", "--out",
                                         _edit_run(c, "run.json", '{"model": "sasrec",')],
         "run.json: not valid JSON"),
    Case("run-json-a-list", lambda c: ["train", "--resume", "--out",
                                       _edit_run(c, "run.json", "[1, 2]")],
         "run.json: expected a JSON object, got list"),
    Case("run-json-without-configs",
         lambda c: ["train", "--resume", "--out",
                    _edit_run(c, "run.json", _json_edit(lambda d: d.pop("model_config")))],
         "'model_config' is missing"),
    Case("run-json-unknown-model",
         lambda c: ["train", "--resume", "--out",
                    _edit_run(c, "run.json", _json_edit(lambda d: d.update(model="gpt9")))],
         "unknown model 'gpt9'"),
    Case("planted-pickle-checkpoint", lambda c: _plant(c, "pickle"),
         "refuses to unpickle anything else"),
    Case("planted-torch-save-checkpoint", lambda c: _plant(c, "torch"),
         "refuses to unpickle anything else"),
    Case("planted-pickle-rng-state", lambda c: _plant(c, "torch", "rng_0.pt"),
         "rng_0.pt is not a checkpoint this gensr wrote"),
    Case("checkpoint-truncated",
         lambda c: ["train", "--resume", "--out", _edit_run(
             c, "last/checkpoint.pt",
             lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]))],
         "checkpoint.pt is not a readable checkpoint"),
    Case("checkpoint-garbage", lambda c: ["train", "--resume", "--out",
                                          _edit_run(c, "last/checkpoint.pt", "not a checkpoint")],
         "checkpoint.pt is not a"),
    Case("checkpoint-empty", lambda c: ["train", "--resume", "--out",
                                        _edit_run(c, "last/checkpoint.pt", b"")],
         "checkpoint.pt is not a readable checkpoint"),
    Case("checkpoint-without-optimizer",
         lambda c: ["train", "--resume", "--out", _edit_run(
             c, "last/checkpoint.pt", _checkpoint_edit(lambda s: s.pop("optimizer")))],
         "no 'optimizer' entry"),
    Case("checkpoint-of-another-shape",
         lambda c: ["train", "--resume", "--out",
                    _edit_run(c, "last/checkpoint.pt", _checkpoint_edit(_wrong_shape))],
         "does not fit this run's model"),
    Case("rng-state-missing", lambda c: ["train", "--resume", "--out", _edit_run(
        c, "last/rng_0.pt", lambda p: p.unlink())], "rng_0.pt missing"),
    Case("resume-as-another-model", lambda c: c.resume("--model", "tem"),
         "trains sasrec, not tem"),
    Case("resume-changing-the-model", lambda c: c.resume("--set", "model.hidden=8"),
         "--resume cannot change model settings"),
    Case("resume-with-a-config", lambda c: ((c.tmp / "c.yaml").write_text("train: {}\n"),
                                            c.resume("--config", c.tmp / "c.yaml"))[1],
         "drop --config/--cf"),
    Case("resume-on-other-data", lambda c: c.resume("--data", c.rec_data), "was trained on data"),
    # --- run directories: evaluate ---------------------------------------------------------
    Case("evaluate-missing-run", lambda c: ["evaluate", c.tmp / "nope"], "does not exist"),
    Case("evaluate-folder-without-model", lambda c: ["evaluate", _marked(c, None)],
         "holds no model (model.json missing)"),
    Case("model-json-not-json", lambda c: ["evaluate", _edit_run(c, "model.json", "{")],
         "model.json: not valid JSON"),
    Case("model-json-binary", lambda c: ["evaluate", _edit_run(c, "model.json", b"\xff\xfe\x00")],
         "model.json: not valid JSON"),
    Case("model-json-without-config",
         lambda c: ["evaluate", _edit_run(c, "model.json", _json_edit(lambda d: d.pop("config")))],
         "'config' is missing"),
    Case("model-json-unknown-model",
         lambda c: ["evaluate", _edit_run(c, "model.json",
                                          _json_edit(lambda d: d.update(model="gpt9")))],
         "unknown model 'gpt9'"),
    Case("model-json-config-out-of-range",
         lambda c: ["evaluate", _edit_run(c, "model.json", _json_edit(
             lambda d: d["config"].update(hidden=0)))], "model.hidden must be >= 1"),
    Case("model-json-of-other-data",
         lambda c: ["evaluate", _edit_run(c, "model.json", _json_edit(
             lambda d: d.update(data_fingerprint="0000")))], "was trained on data 0000"),
    Case("weights-garbage", lambda c: ["evaluate", _edit_run(c, "model.safetensors", b"\x00" * 64)],
         "model.safetensors: not valid safetensors"),
    Case("weights-truncated",
         lambda c: ["evaluate", _edit_run(c, "model.safetensors",
                                          lambda p: p.write_bytes(p.read_bytes()[:200]))],
         "not valid safetensors"),
    Case("weights-of-another-shape",
         lambda c: ["evaluate", _edit_run(c, "model.safetensors", _weights_wrong_shape)],
         "weights do not fit the model"),
    Case("evaluate-run-json-damaged",
         lambda c: ["evaluate", _edit_run(c, "run.json", "{{")], "run.json: not valid JSON"),
    Case("evaluate-bad-split", lambda c: ["evaluate", "--model", "pop", "--data", c.data,
                                          "--split", "train"], "split must be 'valid' or 'test'"),
    # --- a task the data lack --------------------------------------------------------------
    Case("evaluate-search-model-on-rec-only-data",
         lambda c: ["evaluate", "--model", "bm25", "--data", c.rec_data],
         "the test split of"),
    Case("train-search-model-on-rec-only-data",
         lambda c: ["train", "--model", "tem", "--data", c.rec_data, "--out", c.tmp / "r",
                    "--set", "progress=false"], "no training interactions for ['src']"),
    Case("train-with-an-empty-valid-split",
         lambda c: ["train", "--model", "sasrec", "--data", _no_valid_day(c), "--out",
                    c.tmp / "r", "--set", "progress=false"],
         "the valid split has no rec instances: nothing to validate sasrec on"),
    Case("evaluate-an-empty-valid-split",
         lambda c: ["evaluate", "--model", "pop", "--data", _no_valid_day(c), "--split", "valid"],
         "the valid split of"),
    Case("compare-on-an-empty-split",
         lambda c: ((c.tmp / "c.yaml").write_text("eval: {split: valid}\n"),
                    ["compare", "--data", _no_valid_day(c), "--out", c.tmp / "cmp", "--models",
                     "pop", "--config", c.tmp / "c.yaml"])[1],
         "the valid split has no evaluation instances"),
    Case("compare-only-search-models-on-rec-only-data",
         lambda c: ["compare", "--data", c.rec_data, "--out", c.tmp / "cmp", "--models",
                    "tem,bm25"], "none of the models"),
    # --- quickstart and compare outputs ----------------------------------------------------
    Case("quickstart-into-unrelated-folder", lambda c: ["quickstart", "--out", _marked(c, None)],
         "is not a quickstart folder gensr wrote"),
    Case("quickstart-fresh-on-unrelated-folder",
         lambda c: ["quickstart", "--fresh", "--out", _marked(c, None)], "refusing to delete"),
    Case("quickstart-fresh-on-a-data-dir",
         lambda c: ["quickstart", "--fresh", "--out", _marked(c, "data")],
         "is a data directory (gensr data prepare), not a quickstart folder"),
    Case("quickstart-out-is-a-file", lambda c: ["quickstart", "--out", c.csv() / "items.csv"],
         "is a file, not a folder"),
    Case("compare-out-is-a-file", lambda c: ["compare", "--data", c.data, "--out",
                                             c.csv() / "items.csv", "--models", "pop"],
         "is a file, not a folder"),
    Case("compare-run-dir-of-yours", _compare_foreign, "refusing to delete"),
    Case("compare-zero-seeds", lambda c: ["compare", "--data", c.data, "--out", c.tmp / "cmp",
                                          "--seeds", "0"], "--seeds must be >= 1"),
    Case("compare-unknown-model", lambda c: ["compare", "--data", c.data, "--out", c.tmp / "cmp",
                                             "--models", "pop,gpt9"], "unknown model(s) ['gpt9']"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input(case: Case, ctx: Ctx, capsys):
    args = case.setup(ctx)
    roots = (ctx.tmp, ctx.data, ctx.rec_data)
    before = _snapshot(*roots)
    code, text = _gensr(capsys, *args)
    assert "Traceback" not in text, text
    assert code == 2, text
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and text.rstrip().endswith(errors[0]), text  # one line, the last
    expected = case.expect if isinstance(case.expect, tuple) else (case.expect,)
    assert any(e in errors[0] for e in expected), errors[0]
    assert _snapshot(*roots) == before, "files were left behind, changed or deleted"


def test_there_are_many_hostile_inputs():
    assert len(CASES) >= 60 and len({c.id for c in CASES}) == len(CASES)


def test_the_planted_pickle_is_live(tmp_path):
    """The plant of the checkpoint cases does run code when unpickled the old way, so the
    case above shows that the loader, not a dud, kept it from running."""
    sentinel = tmp_path / "PLANT_RAN"
    pickle.loads(pickle.dumps(Plant(sentinel)))
    assert sentinel.exists()
    sentinel.unlink()
    torch.save({"model": Plant(sentinel)}, tmp_path / "c.pt")
    torch.load(tmp_path / "c.pt", weights_only=False)
    assert sentinel.exists()


# --- what hostile inputs must not break ---------------------------------------------------

def test_overwrite_replaces_only_gensrs_own_data_dir(tmp_path, capsys):
    raw = tmp_path / "raw"
    _write(raw / "items.csv", ITEMS)
    _write(raw / "interactions.csv", _interactions())
    out = tmp_path / "data"
    args = ["data", "prepare", "csv", "--raw", raw, "--out", out, "--negatives", "3"]
    assert _gensr(capsys, *args)[0] == 0
    assert json.loads((out / MARKER).read_text())["kind"] == "data" and is_owned(out, "data")
    (out / "interactions.parquet").write_bytes(b"old")
    for name in ("candidates_test.bm25-hard.parquet", "candidates.bm25-hard.json"):
        (out / name).write_bytes(b"x")  # what `gensr data candidates` adds: still gensr's
    assert is_owned(out, "data")
    code, text = _gensr(capsys, *args, "--overwrite")
    assert code == 0, text
    assert (out / "interactions.parquet").read_bytes() != b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "raw"]  # no staging left
    # a data directory of a gensr before the marker: only gensr's files -> replaceable
    (out / MARKER).unlink()
    assert is_owned(out, "data")
    assert _gensr(capsys, *args, "--overwrite")[0] == 0
    assert (out / MARKER).exists()


def test_replace_rules_of_the_other_kinds(tmp_path):
    from gensr.errors import RunError

    legacy = tmp_path / "qs"
    (legacy / "data").mkdir(parents=True)
    (legacy / "results.json").write_text("{}")
    check_replaceable(legacy, "quickstart", RunError)  # a pre-marker quickstart folder
    (legacy / "thesis.tex").write_text("mine")
    with pytest.raises(RunError, match=r"thesis\.tex"):
        check_replaceable(legacy, "quickstart", RunError)
    run = tmp_path / "run"
    run.mkdir()
    (run / "anything").write_text("x")
    with pytest.raises(RunError, match="no .gensr marker"):
        check_replaceable(run, "run", RunError)
    write_marker(run, "run")
    check_replaceable(run, "run", RunError)  # a run directory: the marker alone decides
    with pytest.raises(RunError, match="holds the data directory"):
        check_replaceable(run, "run", RunError, {"data directory": run / "anything"})


def test_careless_exports_are_read(tmp_path):
    """Integral float timestamps, a tab separator (with --option sep=tab) and a log whose
    every row appears twice give the same data as the clean file; the repeats are counted."""
    clean = tmp_path / "clean"
    _write(clean / "items.csv", ITEMS)
    _write(clean / "interactions.csv", _interactions())
    _, base = prepare("csv", clean, tmp_path / "d0", n_negatives=3)

    floats = tmp_path / "floats"
    rows = _interactions()
    _write(floats / "items.csv", ITEMS)
    _write(floats / "interactions.csv", rows[:1] + [
        ",".join(v + ".0" if i == 2 else v for i, v in enumerate(r.split(","))) for r in rows[1:]])
    tabs = tmp_path / "tabs"
    _write(tabs / "items.csv", [r.replace(",", "\t") for r in ITEMS])
    _write(tabs / "interactions.csv", [r.replace(",", "\t") for r in rows])
    twice = tmp_path / "twice"
    _write(twice / "items.csv", ITEMS + ITEMS[1:])
    _write(twice / "interactions.csv", rows + rows[1:])

    fingerprint = json.loads((tmp_path / "d0" / "meta.json").read_text())["fingerprint"]
    for name, raw, options in (("d1", floats, {}), ("d2", tabs, {"sep": "tab"}),
                               ("d3", twice, {})):
        _, report = prepare("csv", raw, tmp_path / name, n_negatives=3, options=options)
        assert json.loads((tmp_path / name / "meta.json").read_text())["fingerprint"] == \
            fingerprint, name
        assert report.counts == base.counts
    n = len(rows) - 1
    assert report.dropped["row repeating an earlier row exactly (same user, item, behaviour, "
                          "query and time; kept the first)"] == n
    assert report.dropped["items.csv row repeating an earlier row exactly (kept the first)"] == \
        N_ITEMS
    assert any("was the log exported twice?" in note for note in report.notes)


def test_atomic_rows_without_a_test_row_are_reported(tmp_path):
    """A user with train and valid rows but no test row cannot be rebuilt: their rows are
    dropped, and the report says so instead of "dropped: none"."""
    raw = _atomic(tmp_path / "raw", valid_only_user=True)
    out, report = prepare("amazon-atomic", raw, tmp_path / "d", n_negatives=3)
    assert report.dropped["valid row of a user with no row in Lab.test.inter"] == 1
    assert report.dropped["train row of a user with no row in Lab.test.inter"] == 3
    assert "- none" not in (out / "report.md").read_text().split("## Rows dropped")[1]
    assert report.counts["users"] == 4


def _started_run(tmp_path: Path, data: Path, *, tb: bool) -> Path:
    """What a ``kill -9`` before the first checkpoint leaves: the marker, run.json
    (status started), perhaps tb/ and a first best model."""
    out = tmp_path / "run"
    train_run(out, "sasrec", data, sets=[*SMALL, "max_steps=2", "eval_every=2"],
              log=lambda _: None)
    shutil.rmtree(out / "last")
    info = json.loads((out / "run.json").read_text())
    info.update(status="started", steps=0, history=[])
    (out / "run.json").write_text(json.dumps(info))
    if not tb:
        shutil.rmtree(out / "tb")
    return out


@pytest.mark.parametrize("resume", [False, True], ids=["fresh-start", "resume"])
def test_run_killed_before_its_first_checkpoint_just_works(tmp_path, tiny_data_dir, capsys,
                                                          resume):
    out = _started_run(tmp_path, tiny_data_dir, tb=True)
    args = (["train", "--out", out, "--resume"] if resume else
            ["train", "--model", "sasrec", "--data", tiny_data_dir, "--out", out,
             *[x for s in [*SMALL, "max_steps=2", "eval_every=2"] for x in ("--set", s)]])
    code, text = _gensr(capsys, *args)
    assert code == 0, text
    assert "stopped before its first checkpoint: starting it again" in text
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "finished" and info["steps"] == 2
    assert (out / "last" / "checkpoint.pt").exists() and (out / MARKER).exists()


def test_a_failed_runs_tb_does_not_block_the_next(tmp_path, tiny_data_dir, monkeypatch):
    from gensr.models.baselines.sasrec import SASRec

    def broken(self, batch):
        raise RuntimeError("out of memory (simulated)")

    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(SASRec, "loss", broken)
        with pytest.raises(RuntimeError, match="simulated"):
            train_run(out, "sasrec", tiny_data_dir, sets=[*SMALL, "max_steps=2"],
                      log=lambda _: None)
    assert (out / "tb").is_dir() and not (out / "last").exists()
    run = train_run(out, "sasrec", tiny_data_dir, sets=[*SMALL, "max_steps=2"],
                    log=lambda _: None)
    assert run.status == "finished"


def test_a_task_missing_from_a_split_is_a_warning(rec_only_data, capsys, tmp_path):
    from gensr.data import load_data
    from gensr.data.batching import eval_instances

    table = eval_instances(load_data(rec_only_data), "test", tasks=("src",))
    assert len(table) == 0 and table.candidates.shape[0] == 0  # no reshape error
    code, text = _gensr(capsys, "evaluate", "--model", "pop", "--data", rec_only_data)
    assert code == 0, text
    assert "warning: the test split has no src instances: evaluating rec only" in text
    config = tmp_path / "c.yaml"
    config.write_text("history_window: 10\n"
                      "defaults:\n  train: {max_steps: 2, eval_every: 2, progress: false, "
                      "batch_size: 32}\nmodels:\n  sasrec:\n    model: {hidden: 16, n_layers: 1}"
                      "\n")
    code, text = _gensr(capsys, "compare", "--data", rec_only_data, "--out", tmp_path / "cmp",
                        "--models", "sasrec,tem,pop", "--config", config, "--no-progress")
    assert code == 0, text
    assert "warning: the test split has no src instances" in text
    assert "tem serves only src" in text
    report = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert list(report["models"]) == ["sasrec", "pop"]
    assert set(report["models"]["pop"]["mean"]) == {"rec"}
    # a model of both tasks trains and validates on the one the data have
    code, text = _gensr(capsys, "train", "--model", "unisar", "--data", rec_only_data, "--out",
                        tmp_path / "uni", *[x for s in ("hidden=16", "max_steps=2",
                                                        "eval_every=2", "progress=false",
                                                        "batch_size=16") for x in ("--set", s)])
    assert code == 0, text
    assert "warning: the training split has no src interactions: unisar trains on rec only" \
        in text
    assert "warning: the valid split has no src instances: validating on rec only" in text
    assert set(json.loads((tmp_path / "uni" / "run.json").read_text())["best_valid"]) == {"rec"}


def test_backbone_export_overwrites_only_an_export(tmp_path):
    from gensr.errors import RunError
    from gensr.models.gensr.backbones.export import export_backbone

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "weights.bin").write_text("precious")
    with pytest.raises(RunError, match="not a backbone gensr exported"):
        export_backbone("google/flan-t5-small", mine, overwrite=True)
    with pytest.raises(RunError, match="is a file, not a folder"):
        export_backbone("google/flan-t5-small", mine / "weights.bin", overwrite=True)
    assert (mine / "weights.bin").read_text() == "precious"
