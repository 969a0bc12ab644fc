"""Result tables: rows = metrics per task, columns = models (the paper's Tables 2–3 layout).

The best value in each row is bold; a model that does not serve a task shows "–".
Values may be a float or a (mean, std) pair (several seeds). ``marks`` (model -> task ->
metric -> text) appends a marker to a cell, e.g. "†" for a significant difference.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from gensr.data.schema import TASK_TITLES
from gensr.screen import show

Cell = float | tuple[float, float] | None
Results = dict[str, dict[str, dict[str, float]]]  # model -> task -> metric -> value
Marks = dict[str, dict[str, dict[str, str]]]  # model -> task -> metric -> marker

TABLE_METRICS: tuple[str, ...] = ("R@5", "N@5", "R@10", "N@10")


def _value(cell: Cell) -> float | None:
    if cell is None:
        return None
    return cell[0] if isinstance(cell, tuple) else float(cell)


def _fmt(cell: Cell, digits: int = 4) -> str:
    if cell is None:
        return "–"
    if isinstance(cell, tuple):
        return f"{cell[0]:.{digits}f} ± {cell[1]:.{digits}f}"
    return f"{cell:.{digits}f}"


def table_rows(
    results: dict[str, dict[str, dict[str, Cell]]],
    metrics: tuple[str, ...] = TABLE_METRICS,
    tasks: tuple[str, ...] = ("rec", "src"),
) -> list[tuple[str, str, list[tuple[str, bool]]]]:
    """(task, metric, [(cell text, is best)] per model) for every row (without marks)."""
    models = list(results)
    rows = []
    for task in tasks:
        if not any(task in results[m] for m in models):
            continue
        for metric in metrics:
            cells: list[Cell] = [results[m].get(task, {}).get(metric) for m in models]
            values = [_value(c) for c in cells]
            present = [v for v in values if v is not None]
            best = max(present) if present else None
            rows.append((task, metric, [
                (_fmt(c), v is not None and best is not None and abs(v - best) < 1e-12)
                for c, v in zip(cells, values)
            ]))
    return rows


def _mark(marks: Marks | None, model: str, task: str, metric: str) -> str:
    return (marks or {}).get(model, {}).get(task, {}).get(metric, "")


def to_markdown(
    results: dict[str, dict[str, dict[str, Cell]]],
    metrics: tuple[str, ...] = TABLE_METRICS,
    title: str | None = None,
    marks: Marks | None = None,
) -> str:
    """A Markdown table, best value per row in bold, "–" where a model skips a task."""
    models = list(results)
    lines = [f"## {title}", ""] if title else []
    lines.append("| task | metric | " + " | ".join(models) + " |")
    lines.append("|---|---|" + "---|" * len(models))
    for task, metric, cells in table_rows(results, metrics):
        text = [(f"**{c}**" if best else c) + _mark(marks, m, task, metric)
                for m, (c, best) in zip(models, cells)]
        lines.append(f"| {TASK_TITLES.get(task, task)} | {metric} | " + " | ".join(text) + " |")
    return "\n".join(lines) + "\n"


def print_table(
    results: dict[str, dict[str, dict[str, Cell]]],
    metrics: tuple[str, ...] = TABLE_METRICS,
    title: str | None = None,
    console: Console | None = None,
    marks: Marks | None = None,
) -> None:
    """Print the same table to the terminal (best in bold), readable at the console's width:
    split by model columns when it is too wide (:func:`gensr.screen.show`)."""
    console = console or Console()
    table = Table(title=title)
    table.add_column("task")
    table.add_column("metric")
    for m in results:
        table.add_column(m, justify="right")
    for task, metric, cells in table_rows(results, metrics):
        table.add_row(TASK_TITLES.get(task, task), metric,
                      *[(f"[bold]{c}[/bold]" if best else c) + _mark(marks, m, task, metric)
                        for m, (c, best) in zip(results, cells)])
    show(table, console, keep=2)
