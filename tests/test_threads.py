"""train.threads and the ThreadGuard: fewer torch threads while other processes hold cores."""

from __future__ import annotations

import json

import pytest
import torch

from gensr.errors import ConfigError
from gensr.threads import ThreadGuard, allowed_cpus, guarded, parse_threads, read_jiffies
from gensr.train import TrainConfig, train_run


@pytest.fixture
def two_threads():
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(saved)


def test_parse_threads():
    assert parse_threads("auto") == "auto" and parse_threads(" Torch ") == "torch"
    assert parse_threads(3) == 3 and parse_threads("2") == 2
    for bad in ("0", "-1", "two", "1.5", ""):
        with pytest.raises(ConfigError, match="train.threads"):
            parse_threads(bad)
    assert TrainConfig(threads=4).threads == "4"
    with pytest.raises(ConfigError, match="train.threads"):
        TrainConfig(threads="many")


class Counters:
    """Scripted /proc readings: each step adds ``busy`` and ``own`` cores for 1 s at 100 Hz."""

    def __init__(self, cpus: int = 2) -> None:
        self.cpus, self.busy, self.total, self.own = cpus, 0, 0, 0

    def advance(self, busy_cores: float, own_cores: float) -> None:
        self.total += 100 * self.cpus
        self.busy += int(100 * busy_cores)
        self.own += int(100 * own_cores)

    def read(self):
        return self.busy, self.total, self.own


def test_guard_drops_a_thread_per_busy_core_and_gives_it_back(two_threads):
    counters, now = Counters(), [0.0]
    lines: list[str] = []
    guard = ThreadGuard(interval_s=1.0, reader=counters.read, clock=lambda: now[0],
                        cpus=[0, 1], log=lines.append)

    def second(busy: float, own: float):
        counters.advance(busy, own)
        now[0] += 1.0
        return guard.poll()

    assert guard.poll() is None  # the interval has not passed
    assert second(busy=2.0, own=2.0) is None  # only this process: keep 2 threads
    assert second(busy=2.0, own=1.9) is None  # 0.1 core of others: within the margin
    assert torch.get_num_threads() == 2
    assert second(busy=2.0, own=1.1) == 1  # another process kept ~0.9 core busy
    assert torch.get_num_threads() == 1 and "2 -> 1" in lines[-1]
    assert second(busy=2.0, own=1.0) is None  # it is still there: stay at 1
    assert second(busy=1.0, own=1.0) == 2  # it left: the thread comes back
    assert torch.get_num_threads() == 2
    assert second(busy=2.0, own=0.0) == 1  # others hold both cores: never fewer than 1
    assert torch.get_num_threads() == 1
    assert [c[1] for c in guard.changes] == [1, 2, 1]
    guard.restore()
    assert torch.get_num_threads() == 2


def test_guard_never_exceeds_the_starting_count(two_threads):
    torch.set_num_threads(1)
    counters, now = Counters(), [0.0]
    guard = ThreadGuard(interval_s=1.0, reader=counters.read, clock=lambda: now[0], cpus=[0, 1])
    counters.advance(0.5, 0.5)
    now[0] = 1.0
    assert guard.poll() is None and torch.get_num_threads() == 1


def test_guard_without_proc_does_nothing(two_threads):
    guard = ThreadGuard(interval_s=0.0, reader=lambda: None, clock=lambda: 5.0, cpus=[0, 1])
    assert guard.poll() is None and torch.get_num_threads() == 2


def test_read_jiffies_on_this_machine():
    sample = read_jiffies(allowed_cpus())
    if sample is None:
        pytest.skip("no /proc/stat here")
    busy, total, own = sample
    assert 0 <= busy <= total and own >= 0


def test_fit_sets_fixed_threads_and_restores_them(tmp_path, tiny_data_dir, two_threads):
    sets = ["model.hidden=32", "model.n_layers=1", "model.max_his_len=20", "progress=false",
            "max_steps=4", "eval_every=4", "batch_size=32", "threads=1"]
    train_run(tmp_path / "run", "sasrec", tiny_data_dir, sets=sets, log=lambda _: None)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["threads"] == {"setting": "1", "start": 1, "changes": []}
    assert run["train_config"]["threads"] == "1"
    assert torch.get_num_threads() == 2  # as before fit


def test_guard_takes_a_first_look_when_primed(two_threads):
    readings = iter([(0, 0, 0), (200, 200, 10)])  # over the wait, others used ~1.9 cores
    guard = ThreadGuard(prime_s=0.01, reader=lambda: next(readings), cpus=[0, 1])
    assert torch.get_num_threads() == 1 and [c[1] for c in guard.changes] == [1]
    guard.restore()
    assert torch.get_num_threads() == 2


def test_guarded_only_where_there_is_something_to_guard(two_threads, monkeypatch):
    with guarded("cuda") as guard:
        assert guard is None
    monkeypatch.setenv("GENSR_THREAD_GUARD", "0")
    with guarded("cpu") as guard:
        assert guard is None
    monkeypatch.delenv("GENSR_THREAD_GUARD")
    torch.set_num_threads(1)
    with guarded("cpu") as guard:
        assert guard is None
    torch.set_num_threads(2)
    with guarded("cpu", prime_s=0.0) as guard:
        if read_jiffies(allowed_cpus()) is None:
            pytest.skip("no /proc/stat here")
        assert guard is not None
        torch.set_num_threads(1)  # as a poll would
    assert torch.get_num_threads() == 2  # restored
