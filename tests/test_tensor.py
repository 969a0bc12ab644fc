"""gensr.tensor, the helpers every model may use: the import direction (models never import
what sits above them), and that the shared helpers compute bit for bit what the per-model
code they replaced computed (the former code is kept here, frozen, as the reference)."""

from __future__ import annotations

import ast
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gensr.models.baselines.unisar import MaskedAttention, TargetAttention, split_by_type
from gensr.models.gensr.soft_filter import SoftFilter
from gensr.tensor import drop_leading_padding, leading_padding, masked_mean, masked_softmax

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SRC = Path(__file__).resolve().parents[1] / "src"

# what models and the CF table sit below: none of it may be imported from gensr/models or cf
ABOVE = ("gensr.runs", "gensr.models.registry", "gensr.train", "gensr.serve", "gensr.compare",
         "gensr.cli", "gensr.quickstart", "gensr.analysis", "gensr.eval.protocol",
         "gensr.eval.runner")
MODEL_MODULES = ("gensr.models.gensr.modeling", "gensr.models.baselines.sasrec",
                 "gensr.models.baselines.tem", "gensr.models.baselines.unisar",
                 "gensr.models.baselines.disc", "gensr.models.baselines.reference")


# --- the import direction ------------------------------------------------------------------
def _imports(path: Path) -> set[str]:
    """Every absolute module a file imports, at the top or inside functions."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_models_and_cf_import_nothing_above_them():
    files = [*(SRC / "gensr" / "models").rglob("*.py"), *(SRC / "gensr" / "cf").rglob("*.py")]
    assert len(files) > 10
    wrong = {}
    for path in files:
        if path == SRC / "gensr" / "models" / "__init__.py":  # the package's lazy registry
            continue
        bad = sorted(n for n in _imports(path)
                     if any(n == a or n.startswith(a + ".") for a in ABOVE))
        if bad:
            wrong[str(path.relative_to(SRC))] = bad
    assert not wrong, f"upward imports: {wrong}"


def test_importing_a_model_loads_neither_runs_nor_the_registry_nor_other_models():
    code = (
        "import json, sys, importlib\n"
        "out = {}\n"
        f"for name in {list(MODEL_MODULES)!r}:\n"
        "    before = set(sys.modules)\n"
        "    for m in [m for m in sys.modules if m.startswith('gensr')]:\n"
        "        del sys.modules[m]\n"
        "    importlib.import_module(name)\n"
        "    out[name] = sorted(m for m in sys.modules if m.startswith('gensr'))\n"
        "print(json.dumps(out))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(SRC)}, check=True)
    loaded = json.loads(result.stdout)
    for name, modules in loaded.items():
        assert name in modules
        above = [m for m in modules if any(m == a or m.startswith(a + ".") for a in ABOVE)]
        assert not above, (name, above)
    # the baselines do not reach into GenSR for tensor helpers (disc is GenSR's twin)
    for name in ("sasrec", "tem", "unisar", "reference"):
        modules = loaded[f"gensr.models.baselines.{name}"]
        assert not [m for m in modules if m.startswith("gensr.models.gensr")], name
    assert "gensr.tensor" in loaded["gensr.models.gensr.modeling"]


def test_runs_still_exports_the_device_helpers():
    import gensr.runs
    import gensr.tensor

    assert gensr.runs.pick_device is gensr.tensor.pick_device
    assert gensr.runs.resolve_precision is gensr.tensor.resolve_precision
    from gensr.models import MODELS, model_class

    assert model_class("sasrec").name == "sasrec" and "gensr" in MODELS


# --- leading padding: the four former copies --------------------------------------------------
def _old_sasrec(items: torch.Tensor) -> torch.Tensor:
    filled = (items > 0).any(0)
    if bool(filled.any()):
        return items[:, int(filled.nonzero()[0]):]
    return items[:, -1:]


def _old_unisar_start(items: torch.Tensor) -> int:
    filled = (items > 0).any(0)
    return int(filled.nonzero()[0]) if bool(filled.any()) else items.shape[1] - 1


def _old_tem_start(items: torch.Tensor) -> int:
    filled = (items > 0).any(0)
    return int(filled.nonzero()[0]) if bool(filled.any()) else items.shape[1]


def _old_split_by_type(types: torch.Tensor, code: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = types.shape[1]
    is_type = types == code
    key = torch.where(is_type, torch.arange(1, n + 1, device=types.device), 0)
    order = torch.sort(key, dim=1, stable=True).indices
    mask = is_type.gather(1, order)
    filled = mask.any(0)
    first = int(filled.nonzero()[0]) if bool(filled.any()) else n - 1
    return order[:, first:], mask[:, first:]


def _left_padded(seed: int, b: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, n + 1, (b,), generator=g)
    items = torch.randint(1, 50, (b, n), generator=g)
    items[torch.arange(n)[None, :] < (n - lengths)[:, None]] = 0
    types = torch.randint(1, 3, (b, n), generator=g) * (items > 0)
    return items, types


@pytest.mark.parametrize("seed", range(12))
def test_drop_leading_padding_equals_the_former_copies(seed):
    b, n = [(1, 1), (3, 5), (8, 12), (16, 20)][seed % 4]
    items, types = _left_padded(seed, b, n)
    if seed % 3 == 0:
        items, types = items * 0, types * 0  # nothing anywhere
    valid = items > 0
    assert torch.equal(drop_leading_padding(valid, items)[0], _old_sasrec(items))
    start = _old_unisar_start(items)
    got = drop_leading_padding(valid, items, types)
    assert torch.equal(got[0], items[:, start:]) and torch.equal(got[1], types[:, start:])
    assert leading_padding(valid, keep=0) == _old_tem_start(items)
    for code in (1, 2):
        new, old = split_by_type(types, code), _old_split_by_type(types, code)
        assert torch.equal(new[0], old[0]) and torch.equal(new[1], old[1])


def test_leading_padding_counts_only_all_padding_columns():
    valid = torch.tensor([[False, False, True, True], [False, True, False, True]])
    assert leading_padding(valid) == 1 and leading_padding(valid, keep=0) == 1
    empty = torch.zeros(2, 4, dtype=torch.bool)
    assert leading_padding(empty) == 3 and leading_padding(empty, keep=0) == 4
    assert leading_padding(empty, keep=2) == 2
    assert leading_padding(torch.ones(2, 4, dtype=torch.bool), keep=1) == 0


# --- masked softmax: the three former copies ---------------------------------------------------
def _old_masked_attention(module: MaskedAttention, x, memory, allowed):
    b, lq, d = x.shape
    lk = memory.shape[1]
    dh = d // module.heads
    q = module.query(x).view(b, lq, module.heads, dh).transpose(1, 2)
    k = module.key(memory).view(b, lk, module.heads, dh).transpose(1, 2)
    v = module.value(memory).view(b, lk, module.heads, dh).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / math.sqrt(dh)
    scores = scores.masked_fill(~allowed[:, None], float("-inf"))
    weights = torch.nan_to_num(torch.softmax(scores, dim=-1), nan=0.0)
    y = module.drop(weights) @ v
    return module.out(y.transpose(1, 2).reshape(b, lq, d))


def _old_soft_filter(module: SoftFilter, candidate, history, mask):
    b, c, d = candidate.shape
    t = history.shape[1]
    dh = d // module.heads
    q = module.query(candidate).view(b, c, module.heads, dh)
    k = module.key(history).view(b, t, module.heads, dh)
    scores = torch.einsum("bchd,bthd->bhct", q, k) / math.sqrt(dh)
    scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    weights = torch.nan_to_num(torch.softmax(scores, dim=-1), nan=0.0)
    v = module.value(history).view(b, t, module.heads, d // module.heads)
    return torch.einsum("bhct,bthd->bchd", weights, v).reshape(b, c, d), weights


def _old_target_attention(module: TargetAttention, history, mask, target):
    scores = torch.einsum("bld,de,bce->bcl", history, module.weight, target)
    scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
    weights = torch.nan_to_num(torch.softmax(scores, dim=-1), nan=0.0)
    return weights @ history


def _grads(out: torch.Tensor, tensors) -> list[torch.Tensor]:
    return list(torch.autograd.grad(out.square().sum(), tensors))


def _mask(g, b, t, empty_row=True):
    mask = torch.rand(b, t, generator=g) > 0.4
    if empty_row:
        mask[0] = False  # a row with nothing to attend to
    return mask


@pytest.mark.parametrize("seed", range(6))
def test_masked_attention_modules_equal_the_former_code(seed):
    g = torch.Generator().manual_seed(seed)
    b, lq, lk, heads, d = 3, [1, 4, 7][seed % 3], [1, 5, 9][seed % 3], [1, 2, 4][seed % 3], 8
    x = torch.randn(b, lq, d, generator=g, requires_grad=True)
    memory = torch.randn(b, lk, d, generator=g, requires_grad=True)
    allowed = torch.rand(b, lq, lk, generator=g) > 0.5
    allowed[0, 0] = False
    torch.manual_seed(seed)
    attention = MaskedAttention(d, heads, dropout=0.2)
    for training in (False, True):
        attention.train(training)
        torch.manual_seed(100)
        new = attention(x, memory, allowed)
        torch.manual_seed(100)
        old = _old_masked_attention(attention, x, memory, allowed)
        assert torch.equal(new, old)
        params = [x, memory, *attention.parameters()]
        torch.manual_seed(100)
        g_new = _grads(attention(x, memory, allowed), params)
        torch.manual_seed(100)
        g_old = _grads(_old_masked_attention(attention, x, memory, allowed), params)
        assert all(torch.equal(a, b_) for a, b_ in zip(g_new, g_old))
    assert torch.equal(new[0, 0], attention.out.bias.detach())  # no key: zeros, then W_o

    filt = SoftFilter(d, heads, value_projection=bool(seed % 2))
    cand = torch.randn(b, lq, d, generator=g, requires_grad=True)
    mask = _mask(g, b, lk)
    new = filt(cand, memory, mask)
    old, old_weights = _old_soft_filter(filt, cand, memory, mask)
    assert torch.equal(new, old) and torch.equal(filt.attention(cand, memory, mask), old_weights)
    params = [cand, memory, *filt.parameters()]
    g_new = _grads(filt(cand, memory, mask), params)
    g_old = _grads(_old_soft_filter(filt, cand, memory, mask)[0], params)
    assert all(torch.equal(a, b_) for a, b_ in zip(g_new, g_old))

    pool = TargetAttention(d)
    new = pool(memory, mask, cand)
    assert torch.equal(new, _old_target_attention(pool, memory, mask, cand))
    params = [cand, memory, pool.weight]
    g_new = _grads(pool(memory, mask, cand), params)
    g_old = _grads(_old_target_attention(pool, memory, mask, cand), params)
    assert all(torch.equal(a, b_) for a, b_ in zip(g_new, g_old))
    assert torch.equal(new[0], torch.zeros(lq, d))


def test_masked_softmax_and_mean():
    scores = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    allowed = torch.tensor([[True, False, True], [False, False, False]])
    weights = masked_softmax(scores, allowed)
    expected = torch.softmax(torch.tensor([1.0, 3.0]), 0)
    assert torch.allclose(weights[0, [0, 2]], expected) and weights[0, 1] == 0
    assert torch.equal(weights[1], torch.zeros(3))
    x = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    assert torch.equal(masked_mean(x, torch.tensor([[True, True, False]])),
                       torch.tensor([[2.0, 3.0]]))
    assert torch.equal(masked_mean(x, torch.zeros(1, 3, dtype=torch.bool)), torch.zeros(1, 2))
