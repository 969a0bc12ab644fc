"""``gensr <command>``: a thin command line over the modules (see ``gensr --help``).

The commands live by theme: :mod:`~gensr.cli.data` (``data …``, ``pretrain-cf``),
:mod:`~gensr.cli.runs` (``train``, ``evaluate``, ``compare``, ``quickstart``),
:mod:`~gensr.cli.serving` (``rank``, ``serve``), :mod:`~gensr.cli.analyze` (``analyze …``);
:mod:`~gensr.cli.common` holds the apps and the shared options.
"""

from __future__ import annotations

import sys

from gensr.cli import analyze, data, runs, serving  # noqa: F401 - registers the commands
from gensr.cli.common import app, console
from gensr.cli.data import pretrain_cf_cmd
from gensr.errors import GensrError

__all__ = ["app", "main", "pretrain_cf_cmd"]

def main() -> None:
    """Console-script entry point: errors at gensr's boundaries print one line, exit 2."""
    try:
        app()
    except GensrError as err:
        console.print(f"[red]error:[/red] {err}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
