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
        _fail(str(err))
    except Exception as err:
        from gensr.outputs import is_no_space

        if not is_no_space(err):
            raise
        # a full disk the command did not name itself (each writer names its path)
        where = getattr(err, "filename", None)
        _fail(f"{where or 'a file'}: no space left on device; free some space and run the "
              "command again")
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    sys.exit(2)


if __name__ == "__main__":
    main()
