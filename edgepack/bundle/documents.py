"""The bundle's documents: manifest.json, report.md and report.html, written together."""

from __future__ import annotations

import json
import os
from pathlib import Path

from edgepack.bundle.files import MANIFEST, REPORT, REPORT_HTML
from edgepack.bundle.manifest import Manifest
from edgepack.bundle.report_html import render_html
from edgepack.bundle.report_md import render_markdown


def write_bundle_documents(bundle: Path, manifest: Manifest) -> None:
    """Write manifest.json, report.md and report.html, each replaced atomically."""
    documents = {MANIFEST: json.dumps(manifest.to_json_dict(), indent=2) + "\n", REPORT: render_markdown(manifest),
                 REPORT_HTML: render_html(manifest)}
    for name, text in documents.items():
        temporary = Path(bundle) / f".{name}.tmp"
        temporary.write_text(text)
        os.replace(temporary, Path(bundle) / name)
