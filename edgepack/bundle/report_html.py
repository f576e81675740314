"""report.html: a self-contained page (inline CSS, plots as embedded PNG) from the bundle manifest."""

from __future__ import annotations

from typing import Optional

from edgepack.bundle.entries import Number
from edgepack.bundle.manifest import BenchFigures, Manifest
from edgepack.bundle.plots import escape as _e
from edgepack.bundle.plots import png as _png
from edgepack.bundle.plots import table as _table
from edgepack.bundle.report_divergence import divergence_html
from edgepack.bundle.report_md import (
    EMBEDDING_HEADERS,
    SUMMARY_HEADERS,
    VALIDATION_HEADERS,
    embedding_table_rows,
    isa_lines,
    speed_flag_lines,
    summary_rows,
    trust_lines,
    validation_rows,
)
from edgepack.bundle.report_tuning import tuning_html
from edgepack.evaluation import tasks

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1100px;color:#222}
h1{margin-bottom:.2rem} h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;width:100%;font-size:.9rem;margin:.5rem 0}
th,td{border:1px solid #ddd;padding:.3rem .5rem;text-align:right} th{background:#f4f4f4}
td.l,th.l{text-align:left} .pass{color:#17702a;font-weight:600} .fail{color:#b00020;font-weight:600}
.badge{display:inline-block;padding:.2rem .6rem;border-radius:.3rem;color:#fff;font-weight:700}
.badge.pass{background:#17702a;color:#fff} .badge.fail{background:#b00020;color:#fff}
.note{color:#666;font-size:.85rem} figure{display:inline-block;margin:.5rem} img{max-width:520px}
"""


def _verdict(passed: bool) -> str:
    return '<span class="pass">pass</span>' if passed else '<span class="fail">FAIL</span>'


def _large_key(manifest: Manifest) -> str:
    return f"batch_{manifest.latency_settings.batch_size}"


def _number(value: Optional[Number]) -> float:
    return float("nan") if value is None else float(value)


def _plots(manifest: Manifest) -> list[tuple[str, str]]:
    """(caption, base64 PNG) for size vs accuracy and latency vs accuracy, float model included."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    large = _large_key(manifest)
    source = manifest.source_model
    metric = tasks.kind(manifest.task).headline
    points = [("float fp32 ONNX", manifest.reference.size_bytes / 1e6,
               source.reference_onnx_latency[large].median_ms, _number(source.metrics.get(metric)))]
    points += [(item.path, item.size_bytes / 1e6, item.latency[large].median_ms, _number(item.metrics.get(metric)))
               for _, item in manifest.artifacts()]
    plots = []
    for axis_index, (label, caption) in enumerate(
            (("size (MB)", f"Size vs {metric}"),
             (f"median latency at {large.replace('_', ' ')} (ms, this CPU)", f"Latency vs {metric}"))):
        figure, axes = plt.subplots(figsize=(5.2, 3.6))
        for index, (name, size, latency, accuracy) in enumerate(points):
            x = size if axis_index == 0 else latency
            axes.scatter([x], [accuracy], s=60, marker="os^Dv<>p*h"[index % 10], label=name, alpha=0.8)
        axes.legend(fontsize=7, loc="best")
        axes.set_xlabel(label)
        axes.set_ylabel(f"{metric} on held-out data")
        axes.grid(alpha=0.3)
        axes.set_title(caption)
        plots.append((caption, _png(figure)))
        plt.close(figure)
    return plots


def render_html(manifest: Manifest) -> str:
    """The whole report page."""
    large = _large_key(manifest)
    source = manifest.source_model
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>edgepack: {_e(manifest.name)}</title>",
             f"<style>{STYLE}</style></head><body>",
             f"<h1>edgepack bundle: {_e(manifest.name)}</h1>",
             f"<p><span class='badge {'pass' if manifest.passed else 'fail'}'>"
             f"{'PASSED' if manifest.passed else 'FAILED'}</span> task <code>{_e(manifest.task)}</code>, "
             f"created {_e(manifest.created_utc)}</p>"]
    drift_columns = tasks.manifest_columns(manifest)
    rows = [["float", _e(source.runtime), f"{(source.size_bytes or 0) / 1e6:.3f}", "—",
             *(tasks.cell(source.metrics, key, spec) for _, key, spec in drift_columns),
             f"{source.latency['batch_1'].median_ms:.3f}", f"{source.latency[large].median_ms:.2f}", ""]]
    for name, item in manifest.artifacts():
        rows.append([_e(name), f"<code>{_e(item.path)}</code> ({_e(item.precision)})",
                     f"{item.size_bytes / 1e6:.3f}", f"{item.size_ratio_vs_fp32_onnx:.2f}x",
                     *(tasks.cell(item.metrics, key, spec) for _, key, spec in drift_columns),
                     f"{item.latency['batch_1'].median_ms:.3f}", f"{item.latency[large].median_ms:.2f}",
                     _verdict(item.passed)])
    for name, target in manifest.targets.items():
        if target.status == "error":
            rows.append([_e(name), f"<span class='fail'>error</span>: {_e(target.error)}"]
                        + [""] * (len(drift_columns) + 4) + [_verdict(False)])
    settings = manifest.latency_settings
    parts += ["<h2>Artifacts</h2>",
              _table(["target", "artifact", "size MB", "vs fp32 ONNX", *(c[0] for c in drift_columns),
                      "ms b1", f"ms b{settings.batch_size}", "verdict"], rows, left=2),
              "<p class='note'>Latency: median wall time on this machine's CPU "
              f"({_e(settings.machine.processor)}, {settings.threads} threads). Drift: each artifact against the "
              f"float model on {manifest.evaluation.samples} held-out samples.</p>"]
    parts += [f"<p class='note'>{_e(note)}</p>" for note in manifest.validation_notes()]
    if validation_rows(manifest):
        parts += ["<h2>Where and how each artifact was validated</h2>",
                  _table(VALIDATION_HEADERS, [[_e(cell) for cell in row] for row in validation_rows(manifest)], left=5)]
        parts += [f"<p class='note'>{_e(line)}</p>" for line in isa_lines(manifest)]
    parts += [f"<p class='fail'>{_e(line)}</p>" for line in speed_flag_lines(manifest)]
    parts.append(f"<h2>Size, {_e(tasks.kind(manifest.task).headline)} and latency</h2>")
    parts += [f"<figure><img alt='{_e(caption)}' src='data:image/png;base64,{data}'><figcaption>{_e(caption)}"
              "</figcaption></figure>" for caption, data in _plots(manifest)]
    parts += ["<h2>Drift against the budget</h2>", _drift_table(manifest),
              "<h2>Compression</h2>", _compression(manifest)]
    parts += divergence_html(manifest)
    parts += tuning_html(manifest)
    checks = trust_lines(manifest)
    if checks:
        parts += ["<h2>Checks beyond drift</h2>", *[f"<p>{_e(line)}</p>" for line in checks]]
    if manifest.bench is not None:
        parts += ["<h2>Benchmark (each entry in a fresh process)</h2>", _bench_table(manifest.bench)]
    parts += ["<h2>Provenance</h2>",
              "<p class='note'>" + ", ".join(f"{_e(k)} {_e(v)}" for k, v in manifest.toolchain.items()) + "</p>",
              "</body></html>"]
    return "\n".join(parts) + "\n"


def _drift_table(manifest: Manifest) -> str:
    rows = []
    for name, item in manifest.artifacts():
        metrics = item.metrics
        for check in item.drift:
            rows.append([_e(name), f"<code>{_e(item.path)}</code>", _e(check.metric), f"{check.value:.4g}",
                         f"{_e(check.bound)} {check.limit:g}", _verdict(check.passed)])
        errors = [f"{metrics[key]:.3g}" for key in ("max_abs_error", "relative_l2") if key in metrics]
        rows.append([_e(name), f"<code>{_e(item.path)}</code>", "max abs / relative L2 error of outputs",
                     " / ".join(errors), "(reported)", ""])
    return _table(["target", "artifact", "metric", "measured", "budget", "verdict"], rows, left=3)


def _compression(manifest: Manifest) -> str:
    source = manifest.source_model
    calibration = manifest.calibration
    lines = []
    if manifest.pruning is not None:
        lines.append(f"<p>Pruning: {_e(manifest.pruning.summary)}</p>")
    else:
        lines.append("<p>Pruning: none in this recipe.</p>")
    if source.params is not None:
        lines.append(f"<p>Float model: {source.params:,} parameters, {source.macs:,} MACs per sample.</p>")
    method = ", ".join(f"{_e(k)}={_e(v)}" for k, v in calibration.method.model_dump().items())
    lines.append(f"<p>Calibration: {method}; {calibration.samples_used} samples "
                 f"(batch {calibration.batch_size}, seed {calibration.seed}).</p>")
    rows = [[_e(cell) if index != 1 or not cell else f"<code>{_e(cell)}</code>" for index, cell in enumerate(row)]
            for row in summary_rows(manifest)]
    lines.append(_table(SUMMARY_HEADERS, rows, left=4))
    tables = embedding_table_rows(manifest)
    if tables:
        lines += ["<h3>Embedding tables</h3>", _table(EMBEDDING_HEADERS, [[_e(cell) for cell in row] for row in tables],
                                                       left=2)]
    return "\n".join(lines)


def _bench_table(bench: BenchFigures) -> str:
    settings = bench.settings
    large = f"batch_{settings.batch_size}"
    rows = [[_e(row.name), _e(row.device),
             f"{row.size_bytes / 1e6:.3f}" if row.size_bytes else "—",
             f"{row.latency['batch_1'].median_ms:.3f}", f"{row.latency[large].median_ms:.2f}",
             f"{row.speedup_vs_eager[large]:.2f}x" if row.speedup_vs_eager is not None else "—",
             f"{row.speedup_vs_onnx_fp32[large]:.2f}x" if row.speedup_vs_onnx_fp32 is not None else "—",
             f"{row.peak_rss_mb:.0f}" if row.peak_rss_mb is not None else "—",
             f"{row.model_memory_mb:.0f}" if row.model_memory_mb is not None else "—"] for row in bench.rows]
    note = (f"<p class='note'>{settings.repeats} timed runs after {settings.warmup} warm-up, "
            f"{settings.threads} threads; data: {_e(settings.data)}. {_e(settings.memory or '')}.</p>")
    return _table(["entry", "runs on", "size MB", "ms b1", f"ms b{settings.batch_size}", "speed-up vs eager",
                   "vs ORT fp32", "peak RSS MB", "model memory MB"], rows, left=2) + note
