"""Shared end-to-end fixtures: one real bundle (with bench) reused by read-only tests."""

from __future__ import annotations

import pytest

from edgepack.pipeline import pack
from edgepack.recipe.load import parse_recipe
from tests.helpers import base_recipe


def pack_example(example, out, bench=False, **changes):
    """Pack the quick-trained example with recipe sections replaced by `changes`."""
    data = base_recipe(example, out)
    for key, value in changes.items():
        data[key] = value
    return pack(parse_recipe(data, source="test", base_dir=example), bench=bench)


@pytest.fixture(scope="session")
def packed(trained_example, tmp_path_factory):
    return pack_example(trained_example, tmp_path_factory.mktemp("e2e") / "bundle", bench=True)
