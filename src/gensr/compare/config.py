"""``gensr compare``'s YAML (``--config``): the settings of the comparison and of each model.

:func:`load_compare_config` reads and checks the layout (see :mod:`gensr.compare`);
:func:`plan_model` turns one model's entry into its model and train settings;
:func:`check_windows` holds every model that reads a history to one window.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gensr.config import load_yaml, update_config
from gensr.data.batching import InstanceTable
from gensr.data.dataset import SRData
from gensr.errors import ConfigError
from gensr.eval.significance import TESTS
from gensr.models.base import ModelConfig
from gensr.models.registry import MODELS, model_class
from gensr.reuse import EvalSettings
from gensr.train import TrainConfig

TOP_KEYS = ("defaults", "models", "eval", "cf", "seeds", "history_window",
            "allow_different_windows", "validation", "significance")


VALIDATION_KEYS = ("eval_max_instances", "eval_fraction", "eval_seed")


@dataclass
class ValidationSettings:
    """One validation subset for every trained model (early stopping and best checkpoint)."""

    max_instances: int = 1000  # valid instances of both tasks; each model keeps its tasks'
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_instances < 1:
            raise ConfigError(f"validation.max_instances must be >= 1, got "
                              f"{self.max_instances}")

    def train_values(self) -> dict[str, Any]:
        """The TrainConfig settings that give every model this subset."""
        return {"eval_max_instances": self.max_instances, "eval_fraction": 1.0,
                "eval_seed": self.seed}


@dataclass
class SignificanceSettings:
    """The paired tests of one model against every other (gensr.eval.significance)."""

    reference: str = "gensr"  # skipped when it is not among --models
    test: str = "t-test"  # t-test | bootstrap
    alpha: float = 0.05  # p below it: marked in the table
    n_boot: int = 10_000  # bootstrap resamples
    seed: int = 0  # bootstrap seed
    # † by the two-level bootstrap over training seeds and instances (the per-instance test
    # is still reported); false: † by the per-instance test alone (the tables before v2)
    seed_aware: bool = True

    def __post_init__(self) -> None:
        if self.test not in TESTS:
            raise ConfigError(f"significance.test must be one of {', '.join(TESTS)}, got "
                              f"{self.test!r}")
        if not 0.0 < self.alpha < 1.0:
            raise ConfigError(f"significance.alpha must be in (0, 1), got {self.alpha}")
        if self.n_boot < 1:
            raise ConfigError(f"significance.n_boot must be >= 1, got {self.n_boot}")


@dataclass
class CompareConfig:
    """The parsed ``--config`` file (see the module docstring)."""

    default_train: dict[str, Any] = field(default_factory=dict)
    models: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    # a column name that is not a registered model -> the registered model it configures
    variants: dict[str, str] = field(default_factory=dict)
    # models.NAME.seeds: that model's seeds, over the top-level seeds (not over --seeds)
    model_seeds: dict[str, list[int]] = field(default_factory=dict)
    eval: EvalSettings = field(default_factory=EvalSettings)
    cf: dict[str, Any] = field(default_factory=dict)
    seeds: list[int] | None = None
    history_window: int | None = None
    allow_different_windows: bool = False
    validation: ValidationSettings | None = None
    significance: SignificanceSettings = field(default_factory=SignificanceSettings)


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping, got {value!r}")
    return value


def load_compare_config(path: str | Path | None) -> CompareConfig:
    """Read and check the YAML layout (values are checked when each model is configured)."""
    if path is None:
        return CompareConfig()
    doc = load_yaml(path)
    unknown = sorted(set(doc) - set(TOP_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {unknown}; expected "
                          f"{list(TOP_KEYS)}")
    defaults = _mapping(doc.get("defaults"), f"{path}: defaults")
    bad = sorted(set(defaults) - {"train"})
    if bad:
        raise ConfigError(f"{path}: defaults takes only 'train:' (got {bad}); model "
                          "settings go under models.NAME.model")
    models: dict[str, dict[str, dict[str, Any]]] = {}
    variants: dict[str, str] = {}
    model_seeds: dict[str, list[int]] = {}
    for name, entry in _mapping(doc.get("models"), f"{path}: models").items():
        entry = _mapping(entry, f"{path}: models.{name}")
        kind = entry.get("type", name)
        if kind not in MODELS:
            raise ConfigError(f"{path}: models.{name}: unknown model {kind!r} (a column that "
                              "is not a model's name needs `type: MODEL`); available: "
                              f"{', '.join(MODELS)}")
        if name != kind:
            if name in MODELS or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", str(name)):
                raise ConfigError(f"{path}: models.{name}: a variant's name must be a plain "
                                  "name (letters, digits, - _ .) that is no model's own name")
            variants[str(name)] = kind
        bad = sorted(set(entry) - {"model", "train", "type", "seeds"})
        if bad:
            raise ConfigError(f"{path}: models.{name}: unknown key(s) {bad}; expected "
                              "'type:', 'model:', 'train:' and 'seeds:'")
        if entry.get("seeds") is not None:
            model_seeds[str(name)] = parse_seeds(entry["seeds"], f"{path}: models.{name}.seeds")
        models[name] = {s: dict(_mapping(entry.get(s), f"{path}: models.{name}.{s}"))
                        for s in ("model", "train")}
    settings = update_config(EvalSettings(), _mapping(doc.get("eval"), f"{path}: eval"),
                             prefix="eval.")
    validation = None
    if doc.get("validation") is not None:
        validation = update_config(ValidationSettings(),
                                   _mapping(doc["validation"], f"{path}: validation"),
                                   prefix="validation.")
    significance = update_config(SignificanceSettings(),
                                 _mapping(doc.get("significance"), f"{path}: significance"),
                                 prefix="significance.")
    window = doc.get("history_window")
    if window is not None and (isinstance(window, bool) or not isinstance(window, int)
                               or window < 1):
        raise ConfigError(f"{path}: history_window must be a positive integer, got {window!r}")
    allow = doc.get("allow_different_windows", False)
    if not isinstance(allow, bool):
        raise ConfigError(f"{path}: allow_different_windows must be true or false, got "
                          f"{allow!r}")
    return CompareConfig(default_train=dict(_mapping(defaults.get("train"),
                                                     f"{path}: defaults.train")),
                         models=models, variants=variants, model_seeds=model_seeds,
                         eval=settings,
                         cf=dict(_mapping(doc.get("cf"), f"{path}: cf")),
                         seeds=parse_seeds(doc.get("seeds"), f"{path}: seeds"),
                         history_window=window, allow_different_windows=allow,
                         validation=validation, significance=significance)


def parse_seeds(value: Any, where: str = "seeds") -> list[int] | None:
    """A list of distinct integer seeds (or None), with an error naming ``where``."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"{where} must be a non-empty list of integers, got {value!r}")
    seeds = []
    for v in value:
        try:
            if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
                raise ValueError
            seeds.append(int(v))
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: {v!r} is not an integer seed") from None
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{where} lists a seed more than once: {seeds}")
    return seeds


def parse_models(spec: str | list[str] | tuple[str, ...],
                 variants: dict[str, str] | None = None) -> list[str]:
    """``"gensr,unisar"`` -> ``["gensr", "unisar"]``, checked against the registry and the
    ``--config``'s named variants (``models.NAME.type``)."""
    names = [n.strip() for n in spec.split(",")] if isinstance(spec, str) else list(spec)
    names = [n for n in names if n]
    if not names:
        raise ConfigError("--models names no model")
    known = [*MODELS, *(variants or {})]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"--models: unknown model(s) {unknown}; available: "
                          f"{', '.join(known)}")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"--models lists {dupes} more than once")
    return names


@dataclass
class ModelPlan:
    """One model's settings as compare will train it (before the seed is applied)."""

    name: str  # the column (a model's name, or a variant's)
    model_values: dict[str, Any]
    train_values: dict[str, Any]
    model_config: ModelConfig
    train_config: TrainConfig
    kind: str = ""  # the registered model (= name unless a variant)

    def __post_init__(self) -> None:
        self.kind = self.kind or self.name

    @property
    def cls(self) -> type:
        return model_class(self.kind)

    @property
    def trainable(self) -> bool:
        return self.cls.trainable

    @property
    def seeded(self) -> bool:
        """Whether seeds change the result (trained models, and `random` via its seed)."""
        return self.trainable or "seed" in _field_names(type(self.model_config))

    @property
    def window(self) -> int | None:
        """The history window: ``max_his_len`` interactions (rows of the canonical log, the
        unit of every model's ``max_his_len``); None for models that read no history."""
        if not self.cls.reads_history:
            return None
        return int(self.model_config.max_his_len)

    @property
    def needs_cf(self) -> bool:
        cfg = self.model_config
        return ("cf_path" in _field_names(type(cfg))
                and not getattr(cfg, "cf_path")  # noqa: B009 - not every config has it
                and getattr(cfg, "use_cf_view", True))


def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def plan_model(name: str, config: CompareConfig, cf_path: Path | None) -> ModelPlan:
    """The model and train settings of ``name`` (YAML defaults < model entry < ``--cf``;
    ``history_window`` under the model entry, ``validation`` over everything)."""
    kind = config.variants.get(name, name)
    cls = model_class(kind)
    entry = config.models.get(name, {"model": {}, "train": {}})
    model_values = dict(entry["model"])
    if config.history_window is not None and cls.reads_history:
        model_values = {"max_his_len": config.history_window, **model_values}
    train_values = {**config.default_train, **entry["train"]}
    if config.validation is not None and cls.trainable:
        clash = [k for k in VALIDATION_KEYS if k in train_values]
        if clash:
            where = (f"models.{name}.train" if clash[0] in entry["train"] else "defaults.train")
            raise ConfigError(f"{where}.{clash[0]} is set by validation: (one validation "
                              "subset for every model); remove it")
        train_values.update(config.validation.train_values())
    if cf_path is not None and "cf_path" in _field_names(cls.config_class):
        model_values["cf_path"] = str(cf_path)
    model_config = update_config(cls.config_class(), model_values, prefix=f"models.{name}.model.")
    train_config = update_config(TrainConfig(), train_values, prefix=f"models.{name}.train.")
    return ModelPlan(name, model_values, train_values, model_config, train_config, kind)


def check_windows(plans: list[ModelPlan], allow: bool) -> bool:
    """Whether every model that reads a history reads the same window; a
    :class:`ConfigError` naming the windows when they differ and ``allow`` is False."""
    windows: dict[int, list[str]] = {}
    for plan in plans:
        if plan.window is not None:
            windows.setdefault(plan.window, []).append(plan.name)
    if len(windows) <= 1:
        return True
    if not allow:
        shown = "; ".join(f"{', '.join(names)} {w}" for w, names in sorted(windows.items()))
        raise ConfigError(
            f"the models read different history windows (max_his_len, in interactions: "
            f"{shown}); give them the same one (history_window: N in --config, or "
            "--history-window N), or set allow_different_windows: true to compare them anyway "
            "(the table then flags it)")
    return False


def window_stats(data: SRData, table: InstanceTable, window: int) -> dict[str, float]:
    """What a ``window`` of interactions holds on the evaluation instances, on average."""
    rows, events = data.sequences.window_counts(table.user, table.seq, window)
    return {"interactions": window,
            "mean_interactions": round(float(rows.mean()), 2) if len(rows) else 0.0,
            "mean_events": round(float(events.mean()), 2) if len(rows) else 0.0}
