"""Latency measurement: medians over timed runs, bounded by a time budget as well as a repeat count."""

from __future__ import annotations

import time

import numpy as np

from edgepack.evaluation.latency import MIN_TIMED_RUNS, make_batch, measure


class SlowRunner:
    """A runner that takes `seconds` a call and counts its calls."""

    input_names = ["x"]
    output_names = ["y"]
    device = "test"
    arithmetic = "sleep"
    fixed_batch = 1

    def __init__(self, seconds: float):
        self.seconds, self.calls = seconds, 0

    def __call__(self, feeds):
        self.calls += 1
        time.sleep(self.seconds)
        return [feeds["x"]]


BATCH = make_batch({"x": np.zeros((3, 2), np.float32)}, 8)


def test_a_slow_model_stops_at_the_time_budget_and_says_so():
    runner = SlowRunner(0.02)
    figure = measure(runner, BATCH, warmup=1, repeats=200, max_seconds=0.1)
    assert MIN_TIMED_RUNS <= figure.repeats < 20 and runner.calls == figure.repeats + 1
    assert figure.cut_short == f"{figure.repeats} of 200 timed runs: stopped after 0.1 s"
    assert 15 <= figure.median_ms <= 200


def test_at_least_the_minimum_runs_even_when_one_call_exceeds_the_budget():
    figure = measure(SlowRunner(0.03), BATCH, warmup=0, repeats=10, max_seconds=0.001)
    assert figure.repeats == MIN_TIMED_RUNS and figure.cut_short is not None


def test_a_fast_model_runs_every_repeat():
    figure = measure(SlowRunner(0.0), BATCH, warmup=2, repeats=25, max_seconds=10)
    assert figure.repeats == 25 and figure.cut_short is None and figure.warmup == 2


def test_make_batch_tiles_a_small_set():
    assert make_batch({"x": np.arange(3)}, 8)["x"].tolist() == [0, 1, 2, 0, 1, 2, 0, 1]
