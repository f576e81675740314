"""Bench figures and report.html from a real bundle, and `edgepack bench` updating a bundle."""

from __future__ import annotations

import base64
import json
import shutil
from html.parser import HTMLParser

import pytest
from click.testing import CliRunner

from edgepack.cli.main import main

pytestmark = pytest.mark.e2e


class _Collector(HTMLParser):
    """Collects tags, image sources and text while checking that the page parses."""

    def __init__(self):
        super().__init__()
        self.images, self.tables, self.text = [], 0, []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        self.tables += tag == "table"

    def handle_data(self, data):
        self.text.append(data)


def test_bench_rows_cover_baselines_and_artifacts(packed):
    bench = packed.manifest.bench
    names = [row.name for row in bench.rows]
    assert names == ["float (PyTorch eager fp32)", "float (ONNX Runtime fp32)", "x86/model.int8.onnx"]
    eager = bench.rows[0]
    assert eager.speedup_vs_eager == {"batch_1": 1.0, "batch_16": 1.0} and eager.size_vs_eager == 1.0
    for row in bench.rows:
        assert set(row.latency) == {"batch_1", "batch_16"}
        assert row.peak_rss_mb > 50 and row.model_memory_mb >= 0
        ratio = eager.latency["batch_16"].median_ms / row.latency["batch_16"].median_ms
        assert row.speedup_vs_eager["batch_16"] == pytest.approx(ratio)
    assert bench.rows[2].device == "CPUExecutionProvider"
    assert bench.settings.repeats == 3 and bench.settings.threads == 2


def test_report_html_is_self_contained_with_plots(packed):
    page = (packed.bundle / "report.html").read_text()
    parser = _Collector()
    parser.feed(page)
    parser.close()
    assert len(parser.images) == 2 and parser.tables >= 4
    for source in parser.images:
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    text = " ".join(parser.text)
    assert "PASSED" in text and "x86/model.int8.onnx" in text and "top1_agreement" in text
    assert "http://" not in page and "https://" not in page, "the page must not fetch anything"


def test_bench_command_updates_manifest_and_writes_json(packed, tmp_path):
    bundle = tmp_path / "copy"
    shutil.copytree(packed.bundle, bundle)
    figures_path = tmp_path / "bench.json"
    result = CliRunner().invoke(main, ["bench", str(bundle), "--batch-size", "8", "--repeats", "3", "--warmup", "1",
                                       "--json", str(figures_path)])
    assert result.exit_code == 0, result.output
    assert "x86/model.int8.onnx" in result.stdout and "speed-up" in result.stdout
    figures = json.loads(figures_path.read_text())
    assert figures["settings"]["batch_sizes"] == [1, 8]
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["bench"] == figures
    assert "Benchmark" in (bundle / "report.html").read_text()
