"""The two models every target's contract runs on, built once per session."""

from __future__ import annotations

import pytest

from tests.targets.contract import ctr_case, image_case


@pytest.fixture(scope="session")
def model_cases(trained_example, tmp_path_factory):
    """name -> ModelCase: "image", the quick-trained example CNN; "ctr", the seeded TinyCtr."""
    return {"image": image_case(trained_example, tmp_path_factory.mktemp("model-image")),
            "ctr": ctr_case(tmp_path_factory.mktemp("model-ctr"))}
