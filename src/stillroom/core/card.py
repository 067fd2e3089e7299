"""The card every run ends with: one row per model, the trade in one table and one plot.

A `Card` is data (rows of plain values) plus how to show it. It writes
`card.json` (machine-readable), `card.md` (for people) and `card.png`
(quality against latency and against size, one point per row).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Column:
    key: str
    header: str
    fmt: str = "{}"
    short: str | None = None
    """Header in the terminal table; None leaves the column out there (it stays in card.md)."""
    short_fmt: Any = None
    """Format in the terminal table: a format string or a function of the value; None uses `fmt`."""

    def show_short(self, value: Any) -> str:
        if callable(self.short_fmt) and value is not None:
            return self.short_fmt(value)
        return Column(self.key, self.header, self.short_fmt or self.fmt).show(value)

    def show(self, value: Any) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "–"
        try:
            return self.fmt.format(value)
        except (ValueError, TypeError):
            return str(value)


@dataclass
class Card:
    title: str
    columns: list[Column]
    rows: list[dict[str, Any]]
    summary: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    quality_key: str = "accuracy"
    speed_key: str = "latency_ms_b1"
    size_key: str = "bytes"
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "rows": self.rows, "summary": self.summary, "notes": self.notes, "meta": self.meta}

    def to_markdown(self) -> str:
        header = "| " + " | ".join(c.header for c in self.columns) + " |"
        rule = "|" + "|".join("---" for _ in self.columns) + "|"
        body = ["| " + " | ".join(c.show(row.get(c.key)) for c in self.columns) + " |" for row in self.rows]
        lines = [f"# {self.title}", "", header, rule, *body, ""]
        if self.summary:
            lines += ["## Summary", ""]
            lines += [f"- **{k}**: {_fmt_summary(v)}" for k, v in self.summary.items()]
            lines.append("")
        notes = self.notes + [f"warning: {w}" for w in self.warnings()]
        if notes:
            lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
        if self.meta:
            lines += ["## Provenance", ""] + [f"- {k}: {v}" for k, v in self.meta.items()] + [""]
        return "\n".join(lines)

    def terminal_columns(self) -> list[Column]:
        """The columns that fit a terminal: those with a short header (all of them when none has one)."""
        chosen = [c for c in self.columns if c.short is not None]
        return chosen or self.columns

    def print(self, width: int | None = None) -> None:
        """A compact table that fits an 80-column terminal; every column and the notes are in card.md."""
        from rich.box import SIMPLE
        from rich.console import Console
        from rich.table import Table

        console = Console(width=width or (None if Console().is_terminal else 100))
        table = Table(title=self.title, box=SIMPLE, pad_edge=False, padding=(0, 1))
        columns = self.terminal_columns()
        for column in columns:
            names = column.key == "name"
            table.add_column(column.short or column.header, justify="left" if names else "right", no_wrap=True,
                             min_width=max((len(str(r.get("name", ""))) for r in self.rows), default=5) if names else None)
        for row in self.rows:
            table.add_row(*(c.show_short(row.get(c.key)) for c in columns))
        console.print(table)
        for key, value in self.summary.items():
            console.print(f"  {key}: {_fmt_summary(value)}")
        for warning in self.warnings():
            console.print(f"  [yellow]warning:[/yellow] {warning}")

    def warnings(self, key: str = "latency_ms_b1", ratio: float = 1.5) -> list[str]:
        """Timing noise that a reader should know of: rows of the same size whose latencies differ by over `ratio`."""
        out = []
        by_size: dict[Any, list[dict]] = {}
        for row in self.rows:
            if row.get(self.size_key) and row.get(key):
                by_size.setdefault(row[self.size_key], []).append(row)
        for same in by_size.values():
            fast, slow = min(same, key=lambda r: r[key]), max(same, key=lambda r: r[key])
            if slow[key] > ratio * fast[key]:
                out.append(f"{fast['name']} and {slow['name']} have the same size but {key} {fast[key]:.3g} vs "
                           f"{slow[key]:.3g}: the machine was busy while they were timed; compare ratios with care")
        return out

    def plot(self, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        labels = {c.key: c.header for c in self.columns}
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for ax, x_key, scale in ((axes[0], self.speed_key, 1.0), (axes[1], self.size_key, 1e-6)):
            for row in self.rows:
                x, y = row.get(x_key), row.get(self.quality_key)
                if x is None or y is None:
                    continue
                marker = "s" if "int8" in str(row["name"]) else "o"
                ax.scatter(x * scale, y, s=60, marker=marker)
                ax.annotate(str(row["name"]), (x * scale, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
            x_label = labels.get(x_key, x_key)
            ax.set_xlabel(x_label if scale == 1.0 else "MB on disk")
            ax.set_ylabel(labels.get(self.quality_key, self.quality_key))
            ax.grid(alpha=0.3)
        axes[0].set_title("quality vs latency")
        axes[1].set_title("quality vs size")
        fig.suptitle(self.title)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)

    def write(self, folder: Path) -> dict[str, Path]:
        folder.mkdir(parents=True, exist_ok=True)
        paths = {"json": folder / "card.json", "md": folder / "card.md", "png": folder / "card.png"}
        paths["json"].write_text(json.dumps(_finite(self.to_dict()), indent=2, default=_jsonable) + "\n", encoding="utf-8")
        paths["md"].write_text(self.to_markdown(), encoding="utf-8")
        self.plot(paths["png"])
        return paths


def _fmt_summary(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _finite(value: Any) -> Any:
    """NaN and infinity become null: JSON has no such numbers, and other languages' parsers reject them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
