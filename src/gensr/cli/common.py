"""What every ``gensr`` command shares: the Typer apps, the console, common options."""

from __future__ import annotations

import typer
from rich.console import Console

console = Console()
app = typer.Typer(
    help="gensr: unified search & recommendation with one generative model (GenSR).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Prepare and inspect canonical S&R data directories.",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")
analyze_app = typer.Typer(
    help="The paper's analyses: mutual information (Table 1), gradient conflict, parameter "
         "space (Fig. 3), ablations (Fig. 4), sweeps (Fig. 5). Each writes CSV + PNG + JSON "
         "(see docs/analysis.md; needs the 'analysis' extra).",
    no_args_is_help=True)
app.add_typer(analyze_app, name="analyze")


def _parse_options(pairs: list[str] | None) -> dict[str, object]:
    from gensr.config import parse_set

    return parse_set(pairs)


def _precision_option():
    """``--precision`` of the commands that score with GenSR."""
    return typer.Option("auto", help="GenSR's scoring precision: auto (bf16 on CUDA, fp32 on "
                                     "CPU) | bf16 | fp32 (docs/speed.md).")


def _fast_path_option():
    """``--fast-path/--no-fast-path`` of the commands that score with GenSR."""
    return typer.Option(True, "--fast-path/--no-fast-path", help="GenSR's speed levers (fused T5 "
                        "pass and length buckets on every device, larger chunks on CUDA; "
                        "docs/speed.md); --no-fast-path runs the original path.")


def _fuse_option(evaluate: bool = False):
    """``--fuse`` of the full-catalogue commands."""
    if evaluate:
        return typer.Option(None, "--fuse", help="With --retriever: also rank by the fused "
                            "score z(model) + W · z(retriever): a weight W >= 0, or auto (the "
                            "best of 0, 0.25 … 4 on 1,000 valid instances, per retriever).")
    return typer.Option(None, "--fuse", help="Full catalogue: rank by the fused score "
                        "z(model) + W · z(retriever): W for every retriever, or NAME=W "
                        "(repeatable); the weight `gensr evaluate --fuse auto` chose.")


def _parse_fuse(values: list[str] | None) -> float | dict[str, float] | None:
    """``--fuse W`` or ``--fuse NAME=W`` (repeatable) -> a weight, or name -> weight (each
    checked by :func:`gensr.serve.full.checked_fuse`)."""
    from gensr.errors import ConfigError
    from gensr.serve.full import checked_fuse

    if not values:
        return None
    if len(values) == 1 and "=" not in values[0]:
        return checked_fuse(values[0])
    out: dict[str, str] = {}
    for value in values:
        name, sep, text = value.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--fuse expects W or NAME=W, got {value!r}")
        out[name.strip()] = text
    return checked_fuse(out)
