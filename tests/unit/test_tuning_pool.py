"""Candidate jobs and executors of the tuning search: what a job reads back, how many workers by default."""

from __future__ import annotations

import dataclasses

import numpy as np

from edgepack.tuning.candidate import SearchFiles, load_samples
from edgepack.tuning.pool import default_workers
from tests.helpers import sample_set


def test_search_files_give_back_the_splits_and_the_float_outputs(tmp_path):
    rng = np.random.default_rng(0)
    fit = sample_set({"image": rng.normal(size=(6, 1, 4, 4)).astype(np.float32)})
    holdout = dataclasses.replace(sample_set({"image": rng.normal(size=(3, 1, 4, 4)).astype(np.float32)}),
                                  labels=np.array([2, 0, 1]), warnings=("a warning",),
                                  extras={"segment": np.array(["a", "b", "a"])})
    reference = rng.normal(size=(3, 10)).astype(np.float32)
    files = SearchFiles.write(tmp_path / "data", fit, holdout, reference)
    for original, path in ((fit, files.fit), (holdout, files.holdout)):
        loaded = load_samples(path)
        assert (loaded.role, loaded.source, loaded.batch_size, loaded.sha256, loaded.warnings) == \
            (original.role, original.source, original.batch_size, original.sha256, original.warnings)
        assert np.array_equal(loaded.arrays["image"], original.arrays["image"])
        assert (loaded.labels is None) == (original.labels is None)
        assert set(loaded.extras) == set(original.extras)
    assert np.array_equal(load_samples(files.holdout).labels, [2, 0, 1])
    assert list(load_samples(files.holdout).extras["segment"]) == ["a", "b", "a"]
    assert np.array_equal(np.load(files.reference), reference)


def test_default_workers_leave_small_hosts_serial():
    assert [default_workers(cores) for cores in (1, 2, 4, 6, 16)] == [1, 1, 2, 3, 4]
