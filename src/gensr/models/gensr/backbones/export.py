"""Write a backbone's weights as fp16/bf16 safetensors in a local directory, to carry to a
machine without network (and without the optional packages the named backbones come in).

The directory holds the Hugging Face model (``config.json``, ``model.safetensors``), its
tokenizer and ``gensr_export.json`` (how to build the backbone from it); ``backbone: DIR``
then loads it like the original, upcast to fp32 for training. A ``bert2bert`` recipe exports
the one encoder-only checkpoint that warm-starts both halves (the cross-attention and LM-head
transform start random either way), so it is half the size of the built encoder-decoder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from gensr.errors import ConfigError, RunError
from gensr.models.gensr.backbones.sources import (
    EXPORT_MARKER,
    load_pretrained,
    quiet_transformers,
    resolve_source,
)
from gensr.outputs import check_output_path

DTYPES: dict[str, torch.dtype] = {"fp16": torch.float16, "bf16": torch.bfloat16,
                                  "fp32": torch.float32}


def folder_bytes(folder: Path) -> dict[str, int]:
    """Size of every file under ``folder``, by relative path."""
    return {str(p.relative_to(folder)): p.stat().st_size
            for p in sorted(folder.rglob("*")) if p.is_file()}


def export_backbone(name: str, out: str | Path, *, dtype: str = "fp16", gguf_file: str = "",
                    overwrite: bool = False) -> dict[str, Any]:
    """Export backbone ``name`` (any ``GenSRConfig.backbone`` form but ``scratch-t5``) to
    ``out`` in ``dtype``; returns what was written (files, bytes, parameters)."""
    from transformers import AutoModel, AutoTokenizer

    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype!r} is not one of {list(DTYPES)}")
    if name == "scratch-t5":
        raise ConfigError("scratch-t5 is built from the data, not exported; give a pretrained "
                          "backbone")
    out = Path(out)
    check_output_path(out, RunError)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise RunError(f"{out} exists and is not empty (add --overwrite to replace it)")
        if not (out / EXPORT_MARKER).is_file():  # --overwrite replaces only an export
            raise RunError(f"refusing to delete {out}: it is not a backbone gensr exported (no "
                           f"{EXPORT_MARKER}); delete it yourself or choose another --out")
    source = resolve_source(name, gguf_file)
    if source.recipe == "bert2bert":
        with quiet_transformers():
            model = AutoModel.from_pretrained(source.path, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(source.path)
        kind = "seq2seq"
    else:
        model, tokenizer, kind, _ = load_pretrained(source)
    parameters = sum(p.numel() for p in model.parameters())  # tied tensors counted once
    model = model.to(DTYPES[dtype])
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    with quiet_transformers():
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    marker = {"format": 1, "recipe": source.recipe, "kind": kind, "source": name,
              "dtype": dtype, "parameters": parameters}
    (tmp / EXPORT_MARKER).write_text(json.dumps(marker, indent=2))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    files = folder_bytes(out)
    return {**marker, "out": str(out), "files": files, "bytes": sum(files.values())}
