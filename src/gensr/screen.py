"""Tables a terminal can show: every command prints its rich tables through :func:`show`.

A table wider than the console is split by columns into several tables, each repeating the
first ``keep`` columns (the row labels), so that an 80-column terminal shows every figure
whole instead of cutting it to ``0.01…``. Right-aligned columns (numbers) never wrap and
are never narrower than their longest cell; other columns may wrap between words, never
inside one.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.padding import Padding
from rich.table import Column, Table
from rich.text import Text


def _plain(cell: Any) -> str:
    if isinstance(cell, Text):
        return cell.plain
    if isinstance(cell, str):
        try:
            return Text.from_markup(cell).plain
        except Exception:  # noqa: BLE001 - not markup after all
            return cell
    return str(cell)


def _longest_word(text: str) -> int:
    return max((Text(w).cell_len for w in text.split()), default=0)


def _lines(cell: Any) -> list[str]:
    return _plain(cell).splitlines() or [""]


def needed_width(column: Column) -> int:
    """The narrowest a column may be: its longest cell for numbers (right-aligned), its
    longest word for text; a header may wrap between words."""
    if column.justify == "right":
        body = max((Text(line).cell_len for c in column.cells for line in _lines(c)),
                   default=0)
    else:
        body = max((_longest_word(_plain(c)) for c in column.cells), default=0)
    return max(body, _longest_word(_plain(column.header)), 1)


def natural_width(column: Column) -> int:
    """The width a column takes when nothing wraps."""
    cells = [*column.cells, column.header]
    return max((Text(line).cell_len for c in cells for line in _lines(c)), default=1)


def layout(natural: list[int], minimum: list[int], available: int) -> list[int]:
    """Column widths that add up to at most ``available``: the natural ones, the widest
    narrowed first, none below its minimum (a table wider than that stays wider)."""
    widths = [max(n, m) for n, m in zip(natural, minimum)]
    excess = sum(widths) - available
    while excess > 0:
        slack = [i for i, (w, m) in enumerate(zip(widths, minimum)) if w > m]
        if not slack:
            break
        widest = max(slack, key=lambda i: (widths[i], i))
        widths[widest] -= 1
        excess -= 1
    return widths


def _overhead(table: Table, n: int) -> int:
    """Characters a table of ``n`` columns spends on padding and rules."""
    _, right, _, left = Padding.unpack(table.padding)
    rules = (n - 1 + (2 if table.show_edge else 0)) if table.box else 0
    pad = n * (left + right) - (0 if table.pad_edge else left + right)
    return pad + rules


def column_groups(widths: list[int], width: int, keep: int, overhead: int = 3) -> list[list[int]]:
    """Indices of the columns of each table: the first ``keep`` in every one, the others
    packed in order while the table stays within ``width`` (at least one each)."""
    keys = list(range(min(keep, len(widths))))
    base = sum(widths[i] + overhead for i in keys) + 1
    groups: list[list[int]] = []
    current: list[int] = []
    used = base
    for i in range(len(keys), len(widths)):
        if current and used + widths[i] + overhead > width:
            groups.append(keys + current)
            current, used = [], base
        current.append(i)
        used += widths[i] + overhead
    if current or not groups:
        groups.append(keys + current)
    return groups


def _copy(table: Table, columns: list[int], widths: list[int], title: Any, width: int
          ) -> Table:
    out = Table(title=title, caption=table.caption, box=table.box, show_header=table.show_header,
                show_edge=table.show_edge, pad_edge=table.pad_edge, padding=table.padding,
                header_style=table.header_style, title_style=table.title_style,
                show_lines=table.show_lines, expand=False)
    chosen = [table.columns[i] for i in columns]
    sizes = layout([natural_width(c) for c in chosen], [widths[i] for i in columns],
                   width - _overhead(table, len(columns)))
    for col, size in zip(chosen, sizes):
        out.add_column(col.header, justify=col.justify, style=col.style,
                       header_style=col.header_style, width=size, overflow="fold")
    cells = [list(c.cells) for c in chosen]
    for r in range(table.row_count):
        out.add_row(*[c[r] if r < len(c) else "" for c in cells])
    return out


def fit(table: Table, width: int, keep: int = 1) -> list[Table]:
    """``table`` as one or more tables no wider than ``width`` (see the module docstring)."""
    n = len(table.columns)
    if n == 0:
        return [table]
    widths = [needed_width(c) for c in table.columns]
    per_column = _overhead(table, 2) - _overhead(table, 1)
    groups = column_groups(widths, width, keep, overhead=max(per_column, 0))
    if len(groups) == 1:
        return [_copy(table, groups[0], widths, table.title, width)]
    title = _plain(table.title) if table.title is not None else ""
    return [_copy(table, g, widths, f"{title} ({k}/{len(groups)})".strip(), width)
            for k, g in enumerate(groups, start=1)]


def show(table: Table, console: Console, keep: int = 1) -> None:
    """Print ``table`` readable at the console's width (split by columns if need be)."""
    for part in fit(table, console.width, keep):
        console.print(part)
