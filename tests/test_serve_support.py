"""Helpers for the serving tests: tiny run directories, requests rebuilt from evaluation
instances in original ids, and a real ``gensr serve`` process on a free loopback port."""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from gensr.data import load_data
from gensr.data.batching import eval_instances
from gensr.data.dataset import SRData
from gensr.models.registry import model_class
from gensr.serve.examples import instance_requests

# a tiny GenSR: scratch T5 backbone, semantic view only (no CF table needed)
TINY_GENSR = dict(backbone="scratch-t5", scratch_d_model=32, scratch_heads=2, scratch_d_ff=64,
                  scratch_layers=1, scratch_decoder_layers=1, scratch_vocab_size=600,
                  max_his_len=8, item_text_tokens=4, use_cf_view=False)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models on a shared 2-core machine: one torch thread is faster (no spinning)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_run(model, data: SRData, run: Path) -> Path:
    """``save_pretrained`` + ``run.json`` naming the data directory."""
    model.save_pretrained(run)
    (run / "run.json").write_text(json.dumps({"model": model.name,
                                              "data_dir": str(Path(data.path).resolve())}))
    return run


@functools.cache
def tiny_runs(data_dir: Path, root: Path) -> dict[str, Path]:
    """gensr (untrained, tiny), pop and bm25 runs on ``data_dir``, built once per session."""
    from gensr.models.gensr import GenSR, GenSRConfig

    data = load_data(data_dir)
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    runs = {"gensr": write_run(GenSR(GenSRConfig(**TINY_GENSR), data), data, root / "gensr")}
    for name in ("pop", "bm25"):
        cls = model_class(name)
        runs[name] = write_run(cls(cls.config_class(), data), data, root / name)
    return runs


def eval_requests_and_scores(model, data: SRData, tmp: Path, max_instances: int | None = None
                             ) -> tuple[list[dict], np.ndarray]:
    """Run ``evaluate(..., scores_out=...)`` and rebuild the same instances as requests."""
    import polars as pl

    from gensr.eval.protocol import evaluate

    path = tmp / f"scores_{model.name}.parquet"
    evaluate(model, data, "test", max_instances=max_instances, progress=False, scores_out=path)
    table = eval_instances(data, "test", tasks=tuple(model.tasks), max_instances=max_instances)
    scores = np.stack(pl.read_parquet(path)["scores"].to_list())
    assert scores.shape == table.candidates.shape
    return instance_requests(data, table), scores


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """``gensr serve RUN --host 127.0.0.1 --port P ...`` in a subprocess (log in a file)."""

    def __init__(self, run: Path, log: Path, *args: str, env: dict | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        cmd = [sys.executable, "-c", "from gensr.cli import main; main()", "serve", str(run),
               "--host", "127.0.0.1", "--port", str(self.port), "--device", "cpu",
               "--threads", "1", *args]
        self._log_file = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self._log_file, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})

    def wait_ready(self, timeout: float = 90.0) -> LiveServer:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}):\n"
                                   f"{self.log.read_text()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server not ready in {timeout}s:\n{self.log.read_text()}")

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30.0) -> int:
        """Ask for a graceful shutdown; kill only if it does not come."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()
        return int(self.proc.returncode)
