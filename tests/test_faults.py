"""Faults as an operator meets them: two writers of one folder, a full disk, a run whose
training died, damaged files, an 80-column terminal, a real client's fuzzing.

* one writer: two ``gensr train`` into one ``--out`` (the second refused naming the first's
  pid and host, the first unharmed), the same for ``data prepare``, ``pretrain-cf`` and
  ``compare``'s run folders; a lock whose process is gone is taken over with a note;
* a full disk: a tiny tmpfs where this machine lets the test mount one (root, ``unshare``),
  and always a write hook that raises ``ENOSPC``, during prepare, training checkpoints, the
  weights and evaluation output: one ``error:`` line naming the path and "no space left",
  exit 2, nothing half-written left;
* an unfinished run is evaluated with a warning naming its state and step;
* truncated Parquet, JSON, YAML, CSV and safetensors files: one line naming the file and
  saying it is damaged; so for every file a saved model is read back from (weights, card,
  word lists, disc's table shape, backbone config and card, tokenizer); a damaged token
  cache is built again after a note; ``save_pretrained`` dying midway leaves each file whole;
* tables at ``COLUMNS=80``: every figure whole;
* schemathesis (``--checks all``) against the served schema of a run with full-catalogue
  routes finds nothing.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gensr.errors import DataError, RunError
from gensr.outputs import acquire_lock, lock_holder, lock_path, release_lock, write_atomic
from gensr.train import train_run
from helpers import run_gensr, write_tiny_run

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = ["model.hidden=16", "model.n_layers=1", "model.max_his_len=10", "progress=false",
         "batch_size=32"]
GENSR = [sys.executable, "-c", "from gensr.cli import main; main()"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _sets(*values: str) -> list[str]:
    return [x for v in values for x in ("--set", v)]


def _one_error(code: int, text: str) -> str:
    """The one ``error:`` line a refused command ends with (exit 2, no traceback)."""
    assert code == 2, text
    assert "Traceback" not in text, text
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and text.rstrip().endswith(errors[0]), text
    return errors[0]


def _enospc(path: object = None) -> OSError:
    return OSError(errno.ENOSPC, "No space left on device", None if path is None else str(path))


def _hold_lock_in_a_child(target: Path) -> subprocess.Popen:
    """Another process that takes ``target``'s writer lock and keeps it until killed."""
    code = ("import sys, time\nfrom gensr.outputs import acquire_lock\n"
            "from gensr.errors import RunError\n"
            f"acquire_lock({str(target)!r}, RunError)\nprint('held', flush=True)\n"
            "time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env=ENV)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


# --- one writer per folder ---------------------------------------------------------------

def test_two_trains_into_one_folder(tmp_path, tiny_data_dir):
    """The second ``gensr train --out race`` is refused naming the first (pid, host); the
    first finishes unharmed and evaluates without a warning; no lock is left behind."""
    race = tmp_path / "race"
    args = ["train", "--model", "sasrec", "--data", str(tiny_data_dir), "--out", str(race),
            *_sets(*SMALL, "max_steps=150", "eval_every=50", "threads=1")]
    first = subprocess.Popen([*GENSR, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, env=ENV)
    try:
        deadline = time.time() + 120
        while not lock_path(race).exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert lock_path(race).exists(), "the first train never took its lock"
        line = _one_error(*run_gensr(*args))
        assert "is being written by another gensr" in line, line
        assert f"pid {first.pid} on host {socket.gethostname()}" in line, line
        assert "gensr train" in line  # the holder's command
        out, _ = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, out
    info = json.loads((race / "run.json").read_text())
    assert info["status"] == "finished" and info["steps"] == 150
    code, text = run_gensr("evaluate", race, "--max-instances", "50")
    assert code == 0 and "did not finish" not in text, text
    assert not lock_path(race).exists() and sorted(p.name for p in tmp_path.iterdir()) == [
        "race"]


def test_prepare_pretrain_cf_and_compare_refuse_a_held_folder(tmp_path, tiny_data_dir):
    held = [tmp_path / "data", tmp_path / "cf.safetensors", tmp_path / "cmp" / "pop" / "seed0"]
    children = [_hold_lock_in_a_child(p) for p in held]
    try:
        for args in (["data", "prepare", "synthetic", "--out", held[0], "--option",
                      "n_users=40", "--option", "n_items=60", "--negatives", "3"],
                     ["pretrain-cf", tiny_data_dir, "--out", held[1], "--epochs", "1",
                      "--no-progress"],
                     ["compare", "--data", tiny_data_dir, "--out", tmp_path / "cmp",
                      "--models", "pop", "--max-instances", "20", "--no-progress"]):
            line = _one_error(*run_gensr(*args))
            assert "is being written by another gensr" in line, line
            assert any(f"pid {c.pid} on host" in line for c in children), line
        assert not held[0].exists() and not held[1].exists()
    finally:
        for child in children:
            child.kill()
            child.wait()


def test_a_stale_lock_is_taken_over_with_a_note(tmp_path):
    """kill -9 leaves the lock file: the next writer takes it over, says so, and removes
    it when done."""
    out = tmp_path / "data"
    child = _hold_lock_in_a_child(out)
    child.kill()
    child.wait()
    assert lock_path(out).exists() and lock_holder(out) is None
    code, text = run_gensr("data", "prepare", "synthetic", "--out", out, "--option",
                           "n_users=40", "--option", "n_items=60", "--negatives", "3")
    assert code == 0, text
    note = next(line for line in text.splitlines() if line.startswith("note:"))
    assert f"took over the lock .data.gensr-lock of pid {child.pid} on host" in note, text
    assert note.endswith("that process is gone")
    assert not lock_path(out).exists() and (out / "meta.json").exists()


def test_the_lock_is_reentrant_and_leaves_no_folder(tmp_path):
    target = tmp_path / "a" / "b" / "run"
    acquire_lock(target, RunError)
    acquire_lock(target, RunError)  # the same process (compare -> train): no refusal
    assert lock_holder(target)["pid"] == os.getpid()  # type: ignore[index]
    release_lock(target)
    assert lock_path(target).exists()
    release_lock(target)
    assert not (tmp_path / "a").exists()  # the folders made for the lock are gone


# --- a full disk -------------------------------------------------------------------------

def _can_mount() -> bool:
    if sys.platform != "linux" or os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    try:
        return subprocess.run(["unshare", "-m", "sh", "-c",
                               "mount -t tmpfs -o size=64k tmpfs /mnt"], timeout=20,
                              capture_output=True).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _on_tiny_disks(*disks: tuple[Path, str, list[list]]) -> dict[str, str]:
    """For each (mount point, size, gensr commands): mount a tmpfs of that size there (in a
    private mount namespace: it vanishes with the commands), run the commands, list what is
    left on it. Returns each part's output by its label (``NAME:COMMAND``, ``NAME:left``)."""
    lines = []
    for mount, size, commands in disks:
        mount.mkdir(parents=True, exist_ok=True)
        lines.append(f"mount -t tmpfs -o size={size} tmpfs '{mount}'")
        for args in commands:
            quoted = " ".join("'" + str(a).replace("'", "'\\''") + "'"
                              for a in [*GENSR, *args])
            lines.append(f"echo '>>> {mount.name}:{args[0]}'; {quoted} 2>&1; echo \"rc=$?\"")
        lines.append(f"echo '>>> {mount.name}:left'; find '{mount}' -mindepth 1 | sort")
    res = subprocess.run(["unshare", "-m", "sh", "-c", "\n".join(lines)], capture_output=True,
                         text=True, timeout=240, env=ENV)
    parts = (res.stdout + res.stderr).split(">>> ")[1:]
    return {p.split("\n", 1)[0].strip(): p.split("\n", 1)[1] if "\n" in p else ""
            for p in parts}


@pytest.mark.skipif(not _can_mount(), reason="cannot mount a tmpfs here (not root, or no "
                    "unshare): the write-hook tests below stand in")
def test_a_real_full_disk(tmp_path, tiny_data_dir):
    """On real tiny filesystems: prepare (600 KB), training (160 KB: a checkpoint does not
    fit) and evaluation scores (64 KB) each end in one line naming the path and "no space
    left", exit 2; nothing half-written is left there."""
    d, r, s = tmp_path / "d", tmp_path / "r", tmp_path / "s"
    parts = _on_tiny_disks(
        (d, "600k", [["data", "prepare", "synthetic", "--out", d / "data"]]),
        (r, "160k", [["train", "--model", "sasrec", "--data", tiny_data_dir, "--out",
                      r / "run", *_sets(*SMALL, "max_steps=6", "eval_every=2", "threads=1")],
                     ["evaluate", r / "run", "--max-instances", "40"]]),
        (s, "64k", [["evaluate", "--model", "random", "--data", tiny_data_dir, "--save-scores",
                     s / "scores.parquet"]]))
    text = "\n".join(f">>> {k}\n{v}" for k, v in parts.items())
    for label, path in (("d:data", d / "data"), ("r:train", r / "run"),
                        ("s:evaluate", s / "scores.parquet")):
        out = parts[label]
        assert "rc=2" in out and "Traceback" not in out, text
        errors = [line for line in out.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and str(path) in errors[0], text
        assert "no space left on device" in errors[0], text
    assert parts["d:left"].split() == [], text  # no --out, no staging folder
    assert parts["s:left"].split() == [], text  # no half-written scores
    left = parts["r:left"].split()
    assert not [p for p in left if p.endswith(".tmp")], text  # no staged checkpoint
    evaluate = parts["r:evaluate"]  # the failed run: refused, or evaluated with a warning
    assert "Traceback" not in evaluate, text
    assert "did not finish training" in evaluate or "rc=2" in evaluate, text


def test_full_disk_during_prepare(tmp_path, monkeypatch):
    import gensr.data.canonical as canonical

    real, calls = canonical._write, []

    def fill_up(path, frame, schema):
        calls.append(path)
        if len(calls) == 3:
            path.write_bytes(b"PAR1 half a file")
            raise _enospc(path)
        real(path, frame, schema)

    monkeypatch.setattr(canonical, "_write", fill_up)
    out = tmp_path / "data"
    line = _one_error(*run_gensr("data", "prepare", "synthetic", "--out", out, "--option",
                                 "n_users=40", "--option", "n_items=60", "--negatives", "3"))
    assert str(out) in line and "no space left on device" in line, line
    assert list(tmp_path.iterdir()) == []  # no --out, no staging folder, no lock


def _paused_failing_train(tmp_path: Path, data: Path, monkeypatch, where: str) -> Path:
    """A sasrec run whose second checkpoint, or first weights, hit a full disk."""
    import gensr.models.base as base
    import gensr.train.checkpoint as checkpoint

    out = tmp_path / "run"
    if where == "checkpoint":
        real, count = checkpoint._save, []

        def save(obj, path):
            if path.name == "checkpoint.pt":
                count.append(path)
                if len(count) == 2:
                    path.write_bytes(b"PK half a checkpoint")
                    try:
                        raise _enospc()
                    except OSError as err:  # what torch's writer reports
                        raise RuntimeError("unexpected pos 11776 vs 11670") from err
            real(obj, path)

        monkeypatch.setattr(checkpoint, "_save", save)
    else:
        real_file, count = base.save_file, []

        def save_file(tensors, filename, *a, **k):
            count.append(filename)
            if len(count) == 1:  # the first best model
                Path(filename).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a")
                raise Exception("Error while serializing: I/O error: No space left on device "
                                "(os error 28)")
            real_file(tensors, filename, *a, **k)

        monkeypatch.setattr(base, "save_file", save_file)
    line = _one_error(*run_gensr("train", "--model", "sasrec", "--data", data, "--out", out,
                                 *_sets(*SMALL, "max_steps=6", "eval_every=2")))
    assert str(out) in line and "no space left on device" in line, line
    return out


def test_full_disk_during_a_training_checkpoint(tmp_path, tiny_data_dir, monkeypatch):
    out = _paused_failing_train(tmp_path, tiny_data_dir, monkeypatch, "checkpoint")
    assert not (out / "last.tmp").exists() and not list(out.glob("*.tmp"))
    info = json.loads((out / "run.json").read_text())
    assert (info["status"], info["error"]) == ("failed", "no space left on device")
    from gensr.train.checkpoint import safe_load

    assert safe_load(out / "last" / "checkpoint.pt")["state"]["step"] == 2  # the last whole one
    monkeypatch.undo()
    code, text = run_gensr("evaluate", out, "--max-instances", "40")
    assert code == 0, text
    assert f"warning: {out} did not finish training (status failed at step 2 of 6" in text
    assert "no space left on device" in text and "--resume" in text
    assert not lock_path(out).exists()
    # once there is room, the run continues from its last checkpoint
    run = train_run(out, resume=True, log=lambda _: None)
    assert run.status == "finished" and run.steps == 6


def test_full_disk_while_writing_the_weights(tmp_path, tiny_data_dir, monkeypatch):
    out = _paused_failing_train(tmp_path, tiny_data_dir, monkeypatch, "weights")
    assert not (out / "model.safetensors").exists()  # cut short: removed, never read as weights
    monkeypatch.undo()
    line = _one_error(*run_gensr("evaluate", out))
    assert "missing" in line and "not a finished run" in line, line  # (model.json: after)
    # the run never reached a checkpoint: the next train starts it again
    run = train_run(out, "sasrec", tiny_data_dir, sets=[*SMALL, "max_steps=2"],
                    log=lambda _: None)
    assert run.status == "finished"


def test_full_disk_during_evaluation_output(tmp_path, tiny_data_dir, monkeypatch):
    import polars as pl

    run = tmp_path / "pop"
    assert run_gensr("train", "--model", "pop", "--data", tiny_data_dir, "--out", run)[0] == 0
    assert run_gensr("evaluate", run, "--max-instances", "30")[0] == 0
    before = (run / "metrics_test.json").read_bytes()

    def half_parquet(self, file, *a, **k):
        Path(file).write_bytes(b"PAR1 half")
        raise _enospc(file)

    scores = tmp_path / "scores.parquet"
    with monkeypatch.context() as patch:
        patch.setattr(pl.DataFrame, "write_parquet", half_parquet)
        line = _one_error(*run_gensr("evaluate", run, "--save-scores", scores,
                                     "--max-instances", "30"))
    assert "no space left on device" in line and str(scores) in line, line
    assert not scores.exists()

    real = Path.write_text

    def full(self, *a, **k):
        if self.name.startswith(".metrics_"):
            self.write_bytes(b'{"rec": {"R@')
            raise _enospc(self)
        return real(self, *a, **k)

    with monkeypatch.context() as patch:
        patch.setattr(Path, "write_text", full)
        line = _one_error(*run_gensr("evaluate", run, "--max-instances", "30"))
    assert "metrics_test.json" in line and "no space left on device" in line, line
    assert (run / "metrics_test.json").read_bytes() == before  # the old file, whole
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def test_write_atomic_keeps_the_old_file(tmp_path):
    path = tmp_path / "card.json"
    path.write_text("old")

    def half(tmp: Path) -> None:
        tmp.write_text("ne")
        raise _enospc(tmp)

    with pytest.raises(RunError, match=r"card\.json.*no space left on device"):
        write_atomic(path, half, RunError)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["card.json"]


# --- an unfinished run ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def paused_run(tmp_path_factory, tiny_data_dir) -> Path:
    out = tmp_path_factory.mktemp("paused") / "run"
    train_run(out, "sasrec", tiny_data_dir, sets=[*SMALL, "max_steps=4", "eval_every=2"],
              stop_after_steps=2, log=lambda _: None)
    return out


def test_an_unfinished_run_is_evaluated_with_a_warning(paused_run, tmp_path):
    run = Path(shutil.copytree(paused_run, tmp_path / "run"))
    code, text = run_gensr("evaluate", run, "--max-instances", "40")
    assert code == 0, text
    assert (f"warning: {run} did not finish training (status paused at step 2 of 4: its "
            "training was paused); these are the weights of step 2, its best validation so "
            f"far; `gensr train --out {run} --resume` continues it") in text
    # died while running: said so; trained now by a live process: named
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "status": "running"}))
    code, text = run_gensr("evaluate", run, "--max-instances", "40")
    assert "status running at step 2 of 4: its training stopped without finishing" in text
    acquire_lock(run, RunError)
    try:
        code, text = run_gensr("evaluate", run, "--max-instances", "40")
    finally:
        release_lock(run)
    assert code == 0 and f"it is being trained now by pid {os.getpid()}" in text, text
    # a finished run: no warning
    (run / "run.json").write_text(json.dumps({**info, "status": "finished"}))
    code, text = run_gensr("evaluate", run, "--max-instances", "40")
    assert code == 0 and "warning" not in text, text


# --- damaged files -------------------------------------------------------------------------

def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("name", ["interactions.parquet", "items.parquet", "meta.json",
                                  "candidates_test.parquet"])
def test_a_truncated_data_file(name, tiny_data_dir, tmp_path):
    data = Path(shutil.copytree(tiny_data_dir, tmp_path / "data"))
    _truncate(data / name)
    line = _one_error(*run_gensr("evaluate", "--model", "pop", "--data", data))
    assert f"{data / name}: not valid" in line and "the file is damaged" in line, line
    assert "prepare the data directory again" in line, line


def test_a_truncated_users_file(tiny_data_dir, tmp_path):
    from gensr.data import load_data

    data = Path(shutil.copytree(tiny_data_dir, tmp_path / "data"))
    _truncate(data / "users.parquet")
    with pytest.raises(DataError, match=r"users\.parquet: not valid Parquet \(.*\): the "
                                        r"file is damaged; prepare the data directory"):
        _ = load_data(data).user_index  # read when a request names a user


def test_truncated_yaml_json_csv_and_safetensors(tmp_path, tiny_data_dir, tiny_cf_path,
                                                 paused_run):
    # YAML: a --config cut mid-flow
    config = tmp_path / "c.yaml"
    config.write_text("model:\n  hidden: 16\ntrain: {max_steps: 2, eval_")
    line = _one_error(*run_gensr("train", "--model", "sasrec", "--data", tiny_data_dir,
                                 "--out", tmp_path / "r", "--config", config))
    assert f"{config}: not valid YAML" in line and "the file is damaged" in line, line
    # JSON: run.json cut short
    run = Path(shutil.copytree(paused_run, tmp_path / "run"))
    _truncate(run / "run.json")
    line = _one_error(*run_gensr("evaluate", run))
    assert "run.json: not valid JSON" in line and "the file is damaged" in line, line
    # CSV: the last row cut mid-row
    raw = Path(shutil.copytree(Path(__file__).resolve().parents[1] / "examples" / "csv",
                               tmp_path / "raw"))
    text = (raw / "interactions.csv").read_text()
    (raw / "interactions.csv").write_text(text[: text.rindex(",", 0, len(text) - 30)])
    line = _one_error(*run_gensr("data", "prepare", "csv", "--raw", raw, "--out",
                                 tmp_path / "d"))
    assert "interactions.csv, line" in line and "the file is damaged" in line, line
    assert not (tmp_path / "d").exists()
    # safetensors and its card: a CF table cut short
    cf = tmp_path / "cf.safetensors"
    shutil.copy(tiny_cf_path, cf)
    shutil.copy(tiny_cf_path.with_suffix(".json"), cf.with_suffix(".json"))
    _truncate(cf)
    line = _one_error(*run_gensr("train", "--model", "lightgcn", "--data", tiny_data_dir,
                                 "--out", tmp_path / "lg", "--cf", cf))
    assert f"{cf}: not valid safetensors" in line and "the file is damaged" in line, line
    shutil.copy(tiny_cf_path, cf)
    _truncate(cf.with_suffix(".json"))
    line = _one_error(*run_gensr("train", "--model", "lightgcn", "--data", tiny_data_dir,
                                 "--out", tmp_path / "lg", "--cf", cf))
    assert "cf.json: not valid JSON" in line and "the file is damaged" in line, line


# --- damaged files of a run directory, a damaged cache, a save that dies midway ---------------

DISC = {"backbone": "scratch-t5", "scratch_d_model": 16, "scratch_vocab_size": 400,
        "max_his_len": 8, "item_text_tokens": 4, "encoder_layers": 1, "encoder_heads": 2,
        "encoder_ff": 32, "head_hidden": 16}


@pytest.fixture(scope="module")
def saved_runs(tmp_path_factory, tiny_data, tiny_cf_path) -> Path:
    """Untrained tiny runs of the models whose run directories hold files besides the
    weights: TEM's words, disc's tokenizer and table shape, GenSR's backbone and tokenizer."""
    root = tmp_path_factory.mktemp("saved")
    for name, values in (("sasrec", {}), ("tem", {}), ("disc", DISC), ("gensr", {})):
        write_tiny_run(name, tiny_data, root, tiny_cf_path, **values)
    return root


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize(("model", "name", "what"), [
    ("sasrec", "model.json", "JSON"),
    ("sasrec", "model.safetensors", "safetensors"),
    ("tem", "tem_words.json", "JSON"),
    ("disc", "disc_embedding.json", "JSON"),
    ("disc", "tokenizer/tokenizer.json", "JSON"),
    ("gensr", "backbone/gensr_backbone.json", "JSON"),
    ("gensr", "backbone/config.json", "JSON"),
    ("gensr", "tokenizer/tokenizer_config.json", "JSON"),
])
def test_a_truncated_model_file(model, name, what, saved_runs, tmp_path):
    """Every file a saved model is read back from: one line naming it, never a parser's
    traceback (the tokenizer's and config's JSON files are read before transformers is)."""
    from gensr.models.base import RUN_AGAIN

    run = Path(shutil.copytree(saved_runs / model, tmp_path / model))
    _truncate(run / name)
    line = _one_error(*run_gensr("evaluate", run, "--max-instances", "20"))
    assert f"{run / name}: not valid {what} (" in line, line
    assert line.endswith(f"the file is damaged; {RUN_AGAIN}"), line


def test_a_damaged_tokenizer_file_that_is_not_json(saved_runs, tmp_path):
    """A tokenizer file only the tokenizer library parses: the folder is named."""
    from gensr.models.gensr.backbone import load_run_tokenizer

    folder = Path(shutil.copytree(saved_runs / "gensr" / "tokenizer", tmp_path / "tok"))
    (folder / "tokenizer.json").write_text('{"version": "1.0", "model": 7}')
    with pytest.raises(RunError, match=r"tok: not valid tokenizer folder \(.*\): the file is "
                                       r"damaged; restore it"):
        load_run_tokenizer(folder)
    with pytest.raises(RunError, match=r"nope is missing: the run's tokenizer"):
        load_run_tokenizer(tmp_path / "nope")


def test_save_pretrained_replaces_each_file_whole(saved_runs, tiny_data, tmp_path,
                                                  monkeypatch):
    """A save that dies midway (a full disk, a crash) leaves the previous weights, card,
    backbone config and tokenizer whole and no temporary file: each file is written beside
    its place and renamed into it."""
    import gensr.models.base as base
    from gensr.models.registry import model_class

    run = Path(shutil.copytree(saved_runs / "gensr", tmp_path / "gensr"))
    model = model_class("gensr").from_pretrained(run, tiny_data)
    before = _files(run)

    def half_weights(tensors, filename, *a, **k):
        Path(filename).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a")
        raise _enospc(filename)

    def half_tokenizer(folder, *a, **k):
        (Path(folder) / "tokenizer.json").write_text('{"version": "1.')
        raise _enospc()

    with monkeypatch.context() as patch:
        patch.setattr(base, "save_file", half_weights)
        with pytest.raises(OSError, match="No space left"):
            model.save_pretrained(run)
    after = _files(run)  # (the artefacts before the weights were saved again, whole)
    assert sorted(after) == sorted(before)  # no temporary file left
    assert all(after[k] == before[k] for k in ("model.safetensors", "model.json"))
    with monkeypatch.context() as patch:
        patch.setattr(model.backbone.tokenizer, "save_pretrained", half_tokenizer)
        with pytest.raises(OSError, match="No space left"):
            model.save_pretrained(run)
    assert _files(run) == after
    model.save_pretrained(run)  # room again: written whole, read back
    assert sorted(_files(run)) == sorted(before)
    model_class("gensr").from_pretrained(run, tiny_data)


def test_a_damaged_token_cache_is_built_again(tmp_path, tiny_data_dir, tiny_cf_path):
    """``DATA_DIR/cache/`` tables cut short or emptied: a one-line note each, built again and
    replaced whole; the command goes on."""
    from gensr.data import load_data

    data = Path(shutil.copytree(tiny_data_dir, tmp_path / "data"))
    shutil.rmtree(data / "cache", ignore_errors=True)
    run = write_tiny_run("gensr", load_data(data), tmp_path, tiny_cf_path)
    whole = _files(data / "cache")
    caches = sorted((data / "cache").glob("*.npy"))
    assert len(caches) == 2, whole.keys()  # item and query tokens
    _truncate(caches[0])
    caches[1].write_bytes(b"")
    code, text = run_gensr("evaluate", run, "--max-instances", "20")
    assert code == 0, text
    notes = [line for line in text.splitlines() if line.startswith("note:")]
    for path in caches:
        assert any(n.startswith(f"note: {path}: not valid .npy table (") and
                   n.endswith("the file is damaged; it is a cache: building it again")
                   for n in notes), text
    assert _files(data / "cache") == whole  # rebuilt whole, no temporary file left
    code, text = run_gensr("evaluate", run, "--max-instances", "20")
    assert code == 0 and "note:" not in text, text


# --- tables at 80 columns ------------------------------------------------------------------

def test_the_full_catalogue_table_at_80_columns(tmp_path, tiny_data, tiny_cf_path,
                                                monkeypatch):
    """``evaluate --full`` with four retrievers: 8 model columns. At 80 columns the table is
    split by columns; every figure of metrics_test_rerank.json is printed whole."""
    from gensr.cli.common import console

    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setattr(console, "_width", 80)
    run = write_tiny_run("gensr", tiny_data, tmp_path, tiny_cf_path)
    code, text = run_gensr("evaluate", run, "--full", "--max-instances", "20",
                           "--retriever", f"lightgcn={tiny_cf_path}", "--retriever", "bm25",
                           "--retriever", "pop",
                           "--retriever", f"lightgcn-history={tiny_cf_path}")
    assert code == 0, text
    report = json.loads((run / "metrics_test_rerank.json").read_text())
    shown = ("R@1", "R@5", "N@5", "R@10", "N@10", "R@20", "N@20", "R@100")
    figures = [f"{row[m]:.4f}" for r in report.values()
               for key in ("retriever_metrics", "rerank_metrics") for row in
               (r[key] or {}).values() for m in shown if m in row]
    assert len(figures) >= 40
    assert all(len(line) <= 80 for line in text.splitlines()), max(text.splitlines(), key=len)
    assert "…" not in text
    missing = [f for f in figures if f not in text]
    assert not missing, (missing[:5], text)
    assert "(1/" in text  # split into several tables


def test_screen_fits_any_table():
    from rich.console import Console
    from rich.table import Table

    from gensr.screen import fit, show

    table = Table(title="a wide table")
    table.add_column("dropped: reason")
    for k in range(9):
        table.add_column(f"model number {k} with a long name", justify="right")
    table.add_row("users with fewer than 5 interactions", *[f"{k * 1234.5678:,.4f}" for k in
                                                             range(9)])
    for width in (40, 80, 120):
        console = Console(width=width, record=True)
        show(table, console)
        text = console.export_text()
        assert all(len(line) <= width for line in text.splitlines()), text
        for k in range(9):
            assert f"{k * 1234.5678:,.4f}" in text
        assert "…" not in text
    assert len(fit(table, 400)) == 1


# --- a real client's fuzzing ---------------------------------------------------------------

def test_the_schema_says_what_the_service_accepts(tiny_data, tiny_cf_path, tmp_path):
    """The three requests schemathesis found: an empty id (the schema now says ids are never
    empty), top_k > rerank_n (now answered with what was retrieved)."""
    from fastapi.testclient import TestClient

    from gensr.serve import Ranker
    from gensr.serve.app import create_app

    run = write_tiny_run("gensr", tiny_data, tmp_path, tiny_cf_path)
    ranker = Ranker.from_run(run, device="cpu")
    app = create_app(ranker)
    schema = app.openapi()["components"]["schemas"]
    assert schema["RankBody"]["properties"]["candidates"]["items"]["minLength"] == 1
    assert schema["HistoryEntry"]["properties"]["item"]["minLength"] == 1
    assert "top_k > rerank_n" in schema["RecommendBody"]["properties"]["top_k"]["description"]
    item = ranker.example_items(1)[0]
    with TestClient(app) as client:
        resp = client.post("/v1/rank", json={"candidates": [""]})  # schema-invalid: refused
        assert resp.status_code == 422 and resp.json()["error"] == "unknown_item"
        for path, extra in (("/v1/recommend", {}), ("/v1/search", {"query": "garden pot"})):
            resp = client.post(path, json={"history": [{"item": item}], "top_k": 30,
                                           "rerank_n": 5, **extra})
            assert resp.status_code == 200, resp.text
            assert len(resp.json()["ranking"]) == resp.json()["n_candidates"] <= 5
        resp = client.post("/v1/rank", json={"candidates": [item], "top_k": 3.0})
        assert resp.status_code == 200, resp.text  # JSON Schema's integers include 3.0


HOOKS = '''
import schemathesis

# what no schema can say: which item and user ids the catalogue holds
MEMBERSHIP = {"unknown_item", "unknown_user"}


@schemathesis.check
def schema_valid_request_accepted(ctx, response, case):
    """A request the schema calls valid is never refused for its form (422 invalid_request):
    only for ids the catalogue does not hold."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or response.status_code != 422:
        return None
    try:
        code = response.json().get("error")
    except ValueError:
        code = None
    if code not in MEMBERSHIP:
        raise AssertionError(f"a request the schema calls valid was refused: {response.text}")
    return None
'''


def test_schemathesis_finds_nothing(tiny_data, tiny_cf_path, tmp_path):
    """``schemathesis run --checks all`` against a served run with full-catalogue routes
    (lightgcn and bm25 retrievers, as quickstart's), on 127.0.0.1, bounded: a few examples
    per operation, a seed, a timeout. 422 is accepted for schema-valid data only when it
    names an id the catalogue does not hold (a custom check, loaded as a hook)."""
    pytest.importorskip("schemathesis")
    from test_serve_support import LiveServer

    run = write_tiny_run("gensr", tiny_data, tmp_path / "runs", tiny_cf_path)
    (tmp_path / "gensr_st_hooks.py").write_text(HOOKS)
    config = tmp_path / "schemathesis.toml"
    config.write_text(
        '[checks.positive_data_acceptance]\nexpected-statuses = ["2xx", "413", "422"]\n'
        '[checks.negative_data_rejection]\nexpected-statuses = ["400", "413", "415", "422"]\n')
    server = LiveServer(run, tmp_path / "serve.log").wait_ready()
    try:
        cmd = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run",
               server.url + "/openapi.json", "--checks", "all", "--max-examples", "15",
               "--workers", "2", "--seed", "7", "--no-color", "--generation-database", "none",
               "--request-timeout", "20"]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path,
                             env={**ENV, "SCHEMATHESIS_HOOKS": "gensr_st_hooks",
                                  "PYTHONPATH": str(tmp_path)})
    finally:
        server.stop()
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-2000:]
    summary = re.search(r"(\d+) generated, (\d+) passed\s", res.stdout)
    assert summary and summary.group(1) == summary.group(2), res.stdout[-3000:]
    assert "/v1/recommend" in res.stdout or "6 selected" in res.stdout
