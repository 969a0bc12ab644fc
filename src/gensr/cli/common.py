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
