"""Helpers for tests (importable as ``helpers``: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# ../shared/data beside the checkout; GENSR_SHARED_DATA points elsewhere (e.g. a worktree)
SHARED = Path(os.environ.get("GENSR_SHARED_DATA",
                             Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def shared_path(name: str) -> Path:
    """A folder of ../shared/data, or skip the test when it is absent (a user's clone)."""
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path


def run_gensr(*args: str) -> tuple[int, str]:
    """Run ``gensr ARGS`` in-process through the console-script entry point (so errors get
    its one-line, exit-2 treatment); returns (exit code, stdout + stderr)."""
    import contextlib
    import io
    import sys
    from unittest import mock

    from gensr.cli import main

    out = io.StringIO()
    code = 0
    with mock.patch.object(sys, "argv", ["gensr", *map(str, args)]), \
            contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return code, out.getvalue()


#: small configs of the trained models, for seeded untrained run directories in tests
TINY_CONFIGS: dict[str, dict] = {
    "gensr": {"backbone": "scratch-t5", "scratch_d_model": 16, "scratch_vocab_size": 400,
              "max_his_len": 6, "item_text_tokens": 4, "scratch_heads": 2, "scratch_d_ff": 32,
              "scratch_layers": 1, "scratch_decoder_layers": 1},
    "sasrec": {"hidden": 16, "n_layers": 1, "max_his_len": 10},
    "tem": {"hidden": 16, "max_his_len": 10},
}


def write_tiny_run(name: str, data, root: Path, cf_path: Path | None = None, **values) -> Path:
    """Save a seeded, untrained ``name`` model (``TINY_CONFIGS`` + ``values``) as a run
    directory ``root/name`` whose run.json names ``data``."""
    import json

    import torch

    from gensr.models.registry import model_class

    cls = model_class(name)
    config = {**TINY_CONFIGS.get(name, {}), **values}
    if cf_path is not None and "cf_path" in cls.config_class.__dataclass_fields__:
        config["cf_path"] = str(cf_path)
    torch.manual_seed(0)
    model = cls(cls.config_class(**config), data).eval()
    run = root / name
    model.save_pretrained(run)
    (run / "run.json").write_text(json.dumps({"model": name,
                                              "data_dir": str(Path(data.path).resolve())}))
    return run


import polars as pl  # noqa: E402
import torch  # noqa: E402

from gensr.models.base import ModelConfig, SRModel  # noqa: E402


class SeenThenTarget(SRModel):
    """A full-ranking scorer for the masking tests: 2 for the user's items of ``favoured``
    splits, 1 for the instance's target (looked up by user and task; the tiny data has one
    instance per pair), else 0."""

    name = "seen-then-target"
    trainable = False

    def __init__(self, data, split, favoured):
        super().__init__(ModelConfig(), data)
        frame = data.candidates(split)
        self.target = {(u, 0 if t == "rec" else 1): i for u, t, i in
                       zip(frame["user_id"], frame["task"], frame["target_item"])}
        rows = data.interactions.filter(pl.col("split").is_in(favoured))
        self.seen: dict[int, list[int]] = {}
        for u, i in zip(rows["user_id"], rows["item_id"]):
            self.seen.setdefault(u, []).append(i)

    def score_all(self, batch):
        out = torch.zeros(len(batch), self.n_items + 1)
        for row, (u, t) in enumerate(zip(batch.user.tolist(), batch.task.tolist())):
            out[row, self.target[(u, t)]] = 1.0
            out[row, self.seen.get(u, [])] = 2.0
        return out
