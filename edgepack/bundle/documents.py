"""The bundle's documents: manifest.json, report.md and report.html, written together."""

from __future__ import annotations

import json
import os
from pathlib import Path

from edgepack.bundle.files import MANIFEST, REPORT, REPORT_HTML
from edgepack.bundle.manifest import Manifest
from edgepack.bundle.report_html import render_html
from edgepack.bundle.report_md import render_markdown


def write_bundle_documents(bundle: Path, manifest: dict) -> None:
    """Validate the manifest against the typed model, then write manifest.json, report.md and
    report.html, each replaced atomically."""
    manifest = Manifest.model_validate(manifest).to_json_dict()
    documents = {MANIFEST: json.dumps(manifest, indent=2) + "\n", REPORT: render_markdown(manifest),
                 REPORT_HTML: render_html(manifest)}
    for name, text in documents.items():
        temporary = Path(bundle) / f".{name}.tmp"
        temporary.write_text(text)
        os.replace(temporary, Path(bundle) / name)
