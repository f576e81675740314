"""Pieces of report.html shared by its sections: escaping, tables, and figures as base64 PNG."""

from __future__ import annotations

import base64
import html
import io
from typing import Any, Callable


def escape(value: object) -> str:
    """HTML-escaped text."""
    return html.escape(str(value))


def table(headers: list[str], rows: list[list[str]], left: int = 1) -> str:
    """An HTML table; the first `left` columns are left-aligned, the others right-aligned (numbers)."""
    head = "".join(f'<th class="l">{escape(h)}</th>' if i < left else f"<th>{escape(h)}</th>"
                   for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f'<td class="l">{c}</td>' if i < left else f"<td>{c}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def png(figure) -> str:
    """A matplotlib figure as base64 PNG."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def axes_png(draw: Callable[[Any], None], *, size: tuple[float, float], xlabel: str, ylabel: str, title: str) -> str:
    """Base64 PNG of one set of axes: `draw(axes)` plots, then labels, grid and title are set."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=size)
    draw(axes)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    axes.set_title(title)
    data = png(figure)
    plt.close(figure)
    return data
