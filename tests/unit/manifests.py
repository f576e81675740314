"""Manifests of real example bundles (trimmed), stored under tests/unit/data as written by edgepack pack."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgepack.bundle.manifest import Manifest

DATA = Path(__file__).resolve().parent / "data"
# image: classification, all four targets, bench; recommender: ctr with embedding tables (no cuda);
# pruned: `edgepack prune` of the image example (pruning and distillation, no targets).
NAMES = ("image", "recommender", "pruned")


def raw_manifest(name: str) -> dict[str, Any]:
    """The stored manifest.json as a dict."""
    return json.loads((DATA / f"manifest_{name}.json").read_text())


def fixture_manifest(name: str) -> Manifest:
    """The stored manifest, validated."""
    return Manifest.model_validate(raw_manifest(name))
