"""The small interface every model implements (GenSR, baselines and reference scorers alike).

* ``loss(batch) -> ModelOutput``: the training objective on a :class:`~gensr.data.Batch`
  whose ``labels`` mark positives among the candidates;
* ``score(batch) -> (B, C)``: one score per candidate, higher = ranked first;
* ``score_all(batch) -> (B, n_items + 1)`` (optional): scores of every item, for full ranking;
* ``query_embedding(batch) -> (B, d)`` and ``item_embeddings() -> (n_items + 1, d)``
  (optional, for models whose ``score_all`` is their inner product): what a vector index
  searches (:mod:`gensr.retrieve`).

Run directories follow Hugging Face's ``save_pretrained``/``from_pretrained``: a
``model.json`` (model name, config, data fingerprint), ``model.safetensors`` and any
artefacts the model needs (a tokenizer, say).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from gensr.config import update_config
from gensr.data.batching import Batch
from gensr.data.dataset import SRData
from gensr.errors import ConfigError, DataError, RunError, damaged
from gensr.files import first_line, read_json
from gensr.outputs import write_atomic

#: the copy of the CF table a run directory holds (models with a ``cf_path`` setting)
CF_FILE = "cf.safetensors"
#: what to do about a damaged file of a run directory (the end of its one-line error)
RUN_AGAIN = "restore it from a copy or train the run again"


@dataclass
class ModelConfig:
    """Settings shared by every model.

    Every model config is range-checked when it is made (before anything is built), by the
    field names' conventions: numbers must be finite; integers >= 0, and >= 1 for sizes
    (``max_his_len``, ``hidden``, ``*_heads``, ``*_dim``, ``*_dims``, ``*_d_model``,
    ``*_d_ff``, ``*_ff``, ``*_vocab_size``, ``ffn_mult``, ``*_tokens``,
    ``*_words``, ``head_hidden``); ``*dropout`` in [0, 1); temperatures (``tau``, ``*_temp``)
    and ``init_std`` > 0; ``alpha`` and ``b`` in [0, 1]; other numbers (loss weights ``lam``,
    ``*_weight``, ``k1`` …) >= 0; ``hidden`` a multiple of ``n_heads``. Subclasses add their
    own checks in ``check()``. ``RETIRED`` names settings an earlier version had (with what
    became of them): old runs and configs that set them still load, the value is dropped.
    """

    RETIRED: ClassVar[dict[str, str]] = {}

    max_his_len: int = 20

    def __post_init__(self) -> None:
        check_ranges(self)
        self.check()

    def check(self) -> None:
        """Model-specific checks (override; raise :class:`ConfigError`)."""


_SIZE_NAMES = ("max_his_len", "hidden", "ffn_mult", "head_hidden")
_SIZE_SUFFIXES = ("heads", "_dim", "_dims", "d_model", "d_ff", "_ff", "vocab_size", "_tokens",
                  "_words")
_UNIT_NAMES = ("alpha", "b")  # float fields in [0, 1]


def _rule(name: str, value: float) -> str | None:
    """The range ``value`` of field ``name`` breaks, or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return "a finite number"
    if isinstance(value, int) and not isinstance(value, bool):
        if name in _SIZE_NAMES or name.endswith(_SIZE_SUFFIXES):
            return None if value >= 1 else ">= 1"
        return None if value >= 0 else ">= 0"
    if "dropout" in name:
        return None if 0.0 <= value < 1.0 else "in [0, 1)"
    if name in ("tau", "init_std") or name.endswith("_temp"):
        return None if value > 0 else "> 0"
    if name in _UNIT_NAMES:
        return None if 0.0 <= value <= 1.0 else "in [0, 1]"
    return None if value >= 0 else ">= 0"


def check_ranges(config: ModelConfig) -> None:
    """Raise :class:`ConfigError` for the first numeric field out of its range (see
    :class:`ModelConfig`)."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            broken = _rule(f.name, v)
            if broken:
                raise ConfigError(f"model.{f.name} must be {broken}, got {v!r}")
    hidden, heads = getattr(config, "hidden", None), getattr(config, "n_heads", None)
    if isinstance(hidden, int) and isinstance(heads, int) and hidden % heads:
        raise ConfigError(f"model.hidden ({hidden}) must be a multiple of model.n_heads "
                          f"({heads})")


@dataclass
class ModelOutput:
    """What ``loss`` returns: the scalar to minimise and named parts to log."""

    loss: torch.Tensor
    logs: dict[str, float] = field(default_factory=dict)


class SRModel(nn.Module):
    """Base class of all gensr models. Subclasses set ``name`` and ``config_class``."""

    name: ClassVar[str] = "base"
    config_class: ClassVar[type[ModelConfig]] = ModelConfig
    tasks: ClassVar[tuple[str, ...]] = ("rec", "src")
    trainable: ClassVar[bool] = True
    reads_query_text: ClassVar[bool] = True  # False: unseen queries need no registration
    # False: the scores never depend on the history (config.max_his_len is not a window)
    reads_history: ClassVar[bool] = True

    @property
    def history_window(self) -> int:
        """How many past interactions of the canonical log each instance's batch carries for
        this model (its config's ``max_his_len``): the one place the window is read. Every
        batch builder (training, evaluation, reranking, serving, the analyses) asks the model
        for it, and a model's ``forward`` can rely on getting at most this many."""
        return int(self.config.max_his_len)

    def __init__(self, config: ModelConfig, data: SRData) -> None:
        super().__init__()
        self.config = config
        self.n_items = data.n_items
        self.data_fingerprint = data.fingerprint
        # query text -> id: the data's queries, plus any that add_queries registers later
        self.known_queries: dict[str, int] = dict(data.query_index)
        # the CF table the model was built from, pinned by hash when a run directory is saved
        source = cf_source(config)
        self.cf_sha256: str | None = None
        if source and Path(source).is_file():
            from gensr.cf.table import file_sha256

            self.cf_sha256 = file_sha256(source)

    # --- the interface -------------------------------------------------------------------
    def loss(self, batch: Batch) -> ModelOutput:
        raise NotImplementedError(f"{self.name} is not trainable")

    def score(self, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def score_all(self, batch: Batch) -> torch.Tensor:
        raise NotImplementedError(f"{self.name} cannot score every item (no full ranking)")

    def query_embedding(self, batch: Batch) -> torch.Tensor:
        """(B, d): the query side of an inner-product model, ``score_all(batch) ==
        query_embedding(batch) @ item_embeddings().T`` (optional; see
        :attr:`supports_embeddings`)."""
        raise NotImplementedError(f"{self.name} is not an inner-product model")

    def item_embeddings(self) -> torch.Tensor:
        """(n_items + 1, d): the item side of an inner-product model (row 0 = padding)."""
        raise NotImplementedError(f"{self.name} is not an inner-product model")

    def add_queries(self, texts: list[str]) -> list[int]:
        """Query ids of ``texts``, for batches built outside the data (serving).

        The default knows only the data's queries and raises for any other text. Models that
        read query text override it to register unseen texts first (new ids after the data's),
        then call this to look the ids up.
        """
        if not self.reads_query_text:  # the query never reaches the scores: any id will do
            return [self.known_queries.get(t, 0) for t in texts]
        unknown = [t for t in dict.fromkeys(texts) if t not in self.known_queries]
        if unknown:
            shown = ", ".join(repr(t) for t in unknown[:3])
            raise DataError(f"{self.name} cannot read query texts outside its data; unknown "
                            f"{'query' if len(unknown) == 1 else 'queries'}: {shown}"
                            f"{' …' if len(unknown) > 3 else ''}")
        return [self.known_queries[t] for t in texts]

    # --- optional hooks for the analyses (gensr analyze) ---------------------------------
    def representation(self, batch: Batch) -> torch.Tensor:
        """(B, C, d): the hidden state the model's task decision reads for each candidate
        (GenSR: the mean of its prompt's encoder states; a discriminative model: the shared
        encoder's output fed to the task heads). Used by the parameter-space analysis."""
        raise NotImplementedError(f"{self.name} exposes no task representation")

    def shared_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The parameters of one self-attention block that both tasks share, for the
        gradient-conflict analysis (cosine of the rec-loss and src-loss gradients)."""
        raise NotImplementedError(f"{self.name} names no shared self-attention block")

    @property
    def reads_user_ids(self) -> bool:
        """Whether scores depend on ``batch.user`` (a learned or pretrained user vector):
        serving such a model needs the request's ``user``. Default False."""
        return False

    @property
    def supports_full_ranking(self) -> bool:
        return type(self).score_all is not SRModel.score_all

    @property
    def supports_embeddings(self) -> bool:
        """Whether the model exposes ``query_embedding``/``item_embeddings`` (an index can search
        its items, exactly or approximately)."""
        return type(self).query_embedding is not SRModel.query_embedding

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        for b in self.buffers():
            return b.device
        return torch.device("cpu")

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW groups: decay on matrices, none on biases, norms and embeddings' 1-d params."""
        decay, no_decay = [], []
        for _, p in self.named_parameters():
            if not p.requires_grad:
                continue
            (decay if p.dim() >= 2 else no_decay).append(p)
        return [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]

    # --- persistence ---------------------------------------------------------------------
    def save_artifacts(self, directory: Path) -> None:
        """Write anything besides the weights that ``__init__`` needs (override)."""

    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``model.json`` + ``model.safetensors`` (+ artefacts) into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.save_artifacts(directory)
        cf = self._save_cf_table(directory)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        # tied weights share storage: keep one name per storage, safetensors refuses aliases
        seen: dict[int, str] = {}
        unique = {}
        for k, v in state.items():
            ptr = v.untyped_storage().data_ptr() if v.numel() else id(v)
            if ptr in seen and v.numel():
                continue
            seen[ptr] = k
            unique[k] = v
        # each file through a temporary file renamed into place: a crash or a full disk
        # leaves the previous weights whole (or none), never half of them; a full disk's
        # error passes unchanged, the trainer words it (gensr.train.run._one_writer)
        write_atomic(directory / "model.safetensors",
                     lambda tmp: save_file(unique, str(tmp)), None)
        write_atomic(directory / "model.json", json.dumps({
            "model": self.name,
            "config": dataclasses.asdict(self.config),
            "data_fingerprint": self.data_fingerprint,
            **({"cf_table": cf} if cf else {}),
        }, indent=2), None)

    def _save_cf_table(self, directory: Path) -> dict[str, str] | None:
        """Copy the CF table the model was built from into ``directory`` (``cf.safetensors``)
        and return its pin (file name, SHA-256, where it came from), so that the run directory
        holds what it needs and a later ``pretrain-cf`` to the source path changes nothing."""
        source = cf_source(self.config)
        if not source:
            return None
        from gensr.cf.table import copy_table, file_sha256

        dest = directory / CF_FILE
        if not Path(source).is_file():
            raise RunError(f"the CF table {source} the model was built from is gone: cannot "
                           f"save it into {directory}")
        digest = file_sha256(dest) if dest.is_file() else None
        if digest is None or (digest != self.cf_sha256
                              and Path(source).resolve() != dest.resolve()):
            copy_table(source, dest)  # first save, or a stale copy from an earlier model
            digest = file_sha256(dest)
        if self.cf_sha256 is not None and digest != self.cf_sha256:
            raise RunError(f"the CF table {source} changed since the model was built from it "
                           "(another `gensr pretrain-cf` to that path?): not saving a run "
                           "that would pair these weights with another table")
        return {"file": CF_FILE, "sha256": digest, "source": str(source)}

    @classmethod
    def build(cls, config: ModelConfig, data: SRData, artifacts: Path | None = None) -> SRModel:
        """Construct the model; ``artifacts`` is a run directory to read saved artefacts from."""
        return cls(config, data)

    @classmethod
    def from_pretrained(cls, directory: str | Path, data: SRData) -> SRModel:
        """Load a model written by :meth:`save_pretrained`, checking it matches ``data``."""
        directory = Path(directory)
        card = read_model_card(directory)
        if card["data_fingerprint"] != data.fingerprint:
            raise RunError(
                f"{directory} was trained on data {card['data_fingerprint']}, but {data.path} "
                f"is {data.fingerprint}: item ids would not match"
            )
        try:
            config = update_config(cls.config_class(), card["config"])
        except ConfigError as err:
            raise RunError(f"{directory / 'model.json'}: {err}") from None
        pin = card.get("cf_table")
        if pin:  # the run's own copy of the CF table, checked against its pin
            from gensr.cf.table import file_sha256

            local = directory / pin.get("file", CF_FILE)
            if not local.is_file():
                raise RunError(f"{local} is missing: the run's copy of its CF table (pinned "
                               f"as sha256 {pin.get('sha256', '?')[:12]}…) is needed to load it")
            if file_sha256(local) != pin.get("sha256"):
                raise RunError(f"{local} does not match the SHA-256 pinned in "
                               f"{directory / 'model.json'}: the CF table was changed after "
                               "training; restore it or train again")
            config = update_config(config, {"cf_path": str(local)})
        model = cls.build(config, data, artifacts=directory)
        weights = directory / "model.safetensors"
        if not weights.exists():  # never score random weights as if they were trained
            raise RunError(f"{weights} is missing: the run holds no weights (an unfinished "
                           "or damaged run; train it again or restore the file)")
        state = _load_weights(weights)
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as err:  # a tensor of the wrong shape
            lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
            raise RunError(f"{weights}: weights do not fit the model "
                           f"({lines[-1][:160] if lines else 'shape mismatch'})") from None
        missing = [m for m in missing if not _is_alias(model, m, state)]
        if missing or unexpected:
            raise RunError(f"{weights}: weights do not fit the model "
                           f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
        return model


def cf_source(config: Any) -> str:
    """The ``cf_path`` setting of a model config ("" when it has none)."""
    return str(getattr(config, "cf_path", "") or "")


def _load_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file; a damaged file is a one-line error."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise damaged(path, "safetensors", first_line(err), RunError, RUN_AGAIN) from None


def _is_alias(model: nn.Module, name: str, state: dict[str, torch.Tensor]) -> bool:
    """Whether ``name`` is a tied parameter whose storage was saved under another name."""
    target = model.state_dict()[name]
    for k, v in model.state_dict().items():
        if k != name and k in state and v.data_ptr() == target.data_ptr():
            return True
    return False


def read_model_card(directory: str | Path) -> dict[str, Any]:
    """The ``model.json`` of a run directory, with a clear error when it is missing."""
    path = Path(directory) / "model.json"
    if not path.exists():
        raise RunError(f"{directory} holds no model (model.json missing): not a finished run")
    card: dict[str, Any] = read_json(path, RunError, hint=RUN_AGAIN)
    for key, kind in (("model", str), ("config", dict), ("data_fingerprint", str)):
        if not isinstance(card.get(key), kind):
            raise RunError(f"{path}: '{key}' is missing or not a {kind.__name__}: not a "
                           "model.json gensr wrote")
    if card.get("cf_table") is not None and not isinstance(card["cf_table"], dict):
        raise RunError(f"{path}: 'cf_table' is not a dict: not a model.json gensr wrote")
    return card
