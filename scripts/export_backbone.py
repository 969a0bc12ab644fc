#!/usr/bin/env python3
"""Export a GenSR backbone as fp16 (or bf16/fp32) safetensors into a local directory.

    python scripts/export_backbone.py minilm-bert2bert --out .carry/minilm-fp16 --dtype fp16
    python scripts/export_backbone.py smollm2-135m --out .carry/smollm2-fp16 --dtype fp16

Then train with ``--set backbone=.carry/minilm-fp16`` (or ``backbone:`` in the YAML): the
directory needs neither network nor the optional package the backbone came in. NAME is any
``GenSRConfig.backbone`` form but ``scratch-t5`` (hub name, local directory, ``bert2bert:NAME``,
``DIR/FILE.gguf``, a named backbone). See docs/backbones.md.
"""

from __future__ import annotations

import argparse
import sys

MIB = 1024 * 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="the backbone (e.g. minilm-bert2bert, smollm2-135m)")
    parser.add_argument("--out", required=True, help="directory to write")
    parser.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"])
    parser.add_argument("--gguf-file", default="", help="a GGUF file inside NAME (a directory)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    args = parser.parse_args(argv)

    from gensr.errors import GensrError
    from gensr.models.gensr.backbones.export import export_backbone

    try:
        report = export_backbone(args.name, args.out, dtype=args.dtype,
                                 gguf_file=args.gguf_file, overwrite=args.overwrite)
    except GensrError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for name, size in report["files"].items():
        print(f"  {size / MIB:9.2f} MiB  {name}")
    print(f"{report['source']} ({report['recipe']}, {report['kind']}): "
          f"{report['parameters'] / 1e6:.1f}M parameters exported as {report['dtype']}: "
          f"{report['bytes'] / MIB:.1f} MiB in {report['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
