"""The tuning section of the reports: every candidate tried per target, a Pareto view of latency against
agreement with the chosen one marked, and the layers most sensitive to weight rounding."""

from __future__ import annotations

import html

from edgepack.bundle.manifest import Manifest
from edgepack.bundle.plots import axes_png, escape, table
from edgepack.tuning.record import TrialRecord, TuningRecord

HEADERS = ["#", "candidate", "top-1 agree", "rel. L2", "ms", "size MB", "verdict"]


def _agreement(trial: TrialRecord) -> str:
    value = trial.metrics.get("top1_agreement")
    return f"{value:.4f}" if value is not None else "—"


def trial_rows(record: TuningRecord) -> list[list[str]]:
    """One row per trial, in the order tried, as plain text."""
    rows = []
    for index, trial in enumerate(record.trials):
        verdict = "error: " + trial.error if trial.error else "meets budget" if trial.passed else "over budget"
        rows.append([str(index), trial.label + (" (chosen)" if index == record.chosen else ""), _agreement(trial),
                     f"{trial.metrics['relative_l2']:.3g}" if "relative_l2" in trial.metrics else "—",
                     f"{trial.latency_ms:.1f}" if trial.latency_ms is not None else "—",
                     f"{trial.size_bytes / 1e6:.3f}" if trial.size_bytes else "—", verdict])
    return rows


def summary_lines(name: str, record: TuningRecord) -> list[str]:
    """What the search concluded and what it could not check, in sentences."""
    lines = [f"{name}: {record.reason}. {record.fit_samples} calibration samples calibrated the candidates, "
             f"{record.holdout_samples} held out scored them (never the evaluation data)."]
    if record.bounds_not_checked:
        lines.append(f"Not checked while tuning (they need labels the calibration data lacks): "
                     f"{', '.join(record.bounds_not_checked)}; checked on the evaluation data.")
    if record.sensitivity:
        top = "; ".join(f"{item.module} ({item.alone:.3g})" for item in record.sensitivity[:5])
        lines.append(f"Most sensitive layers to weight rounding (relative output error, alone): {top}.")
    return lines


def pareto_png(name: str, record: TuningRecord) -> str:
    """Base64 PNG: latency against top-1 agreement (or -relative L2) of every built trial, chosen marked."""
    built = [(index, trial, trial.latency_ms) for index, trial in enumerate(record.trials)
             if trial.error is None and trial.latency_ms is not None]
    use_agreement = all("top1_agreement" in trial.metrics for _, trial, _ in built)

    def draw(axes) -> None:
        for index, trial, latency in built:
            y = trial.metrics["top1_agreement"] if use_agreement else trial.metrics.get("relative_l2", float("nan"))
            chosen = index == record.chosen
            axes.scatter([latency], [y], s=110 if chosen else 50, marker="*" if chosen else "o",
                         color="#17702a" if trial.passed else "#b00020", zorder=3)
            axes.annotate(str(index) + (" chosen" if chosen else ""), (latency, y), fontsize=7,
                          xytext=(4, 3), textcoords="offset points")

    batch = record.trials[0].latency_batch if record.trials else "?"
    return axes_png(draw, size=(5.2, 3.6), xlabel=f"median latency at batch {batch} (ms)",
                    ylabel="top-1 agreement (held-out calibration)" if use_agreement else "relative L2 of outputs",
                    title=f"{name}: candidates tried (green meets the budget)")


def tuning_html(manifest: Manifest) -> list[str]:
    """The report.html section, empty when pack did not search."""
    if not manifest.tuning:
        return []
    parts = ["<h2>Tuning</h2>"]
    for name, record in manifest.tuning.items():
        parts.append(f"<h3>{escape(name)}</h3>")
        parts += [f"<p class='note'>{escape(line)}</p>" for line in summary_lines(name, record)]
        parts.append(table(HEADERS, [[escape(cell) for cell in row] for row in trial_rows(record)], left=2))
        caption = f"Pareto view of {name}: latency against agreement"
        parts.append(f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,"
                     f"{pareto_png(name, record)}'><figcaption>{html.escape(caption)}</figcaption></figure>")
    return parts


def tuning_markdown(manifest: Manifest) -> list[str]:
    """The report.md section, empty when pack did not search."""
    lines: list[str] = []
    for name, record in manifest.tuning.items():
        lines += ["", f"## Tuning: {name}", "", *summary_lines(name, record), "",
                  "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
        lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in trial_rows(record)]
    return lines
