"""`edgepack tune` on a local process pool and on a Ray cluster that the test starts: the same record as the
serial search, with latency measured once no candidate runs."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from edgepack.model.load import load_model
from edgepack.model.onnx_export import export_float_onnx
from edgepack.pipeline import load_data, resolve_targets
from edgepack.progress import SilentProgress
from edgepack.recipe.budget import Budget
from edgepack.recipe.load import load_recipe
from edgepack.tuning.run import INLINE_LATENCY, LATENCY_AFTERWARDS, prepare_search, tune_targets
from tests.helpers import base_recipe, write_recipe

RAY_START_SECONDS = 120


@pytest.fixture(scope="module")
def prepared(trained_example, tmp_path_factory):
    """The example's recipe (x86 weights pinned: one scheme per trial) and what every search of it shares,
    prepared once: the split, the float outputs, the sensitivity, the fp32 ONNX. Each test then runs
    the searches alone (edgepack.tuning.run.tune_targets), which is what the executors change."""
    folder = tmp_path_factory.mktemp("scale-out")
    recipe = {**base_recipe(trained_example, folder / "bundle"),
              "target_options": {"x86": {"portable_weights": "int8-7bit"}},
              "tune": {"max_float_layers": 2, "correction_samples": 8, "sensitivity_samples": 4}}
    recipe = load_recipe(write_recipe(trained_example, recipe, name=f"{folder.name}.yaml"))
    calibration, _ = load_data(recipe)
    module = load_model(recipe).module
    onnx = export_float_onnx(module, recipe.inputs, {"image": calibration.arrays["image"][:2]},
                             folder / "model.fp32.onnx")
    data = prepare_search(recipe, teacher=module, student=module, student_onnx=onnx, calibration=calibration,
                          scratch=folder / "search", progress=SilentProgress())
    return recipe, resolve_targets(recipe), data, folder


def _tune(prepared, budget: dict, **tune) -> dict:
    """The searches of every target under `budget`, on the executor `tune` (workers, ray) asks for."""
    recipe, targets, data, folder = prepared
    recipe = recipe.model_copy(update={"budget": Budget.model_validate(budget),
                                       "tune": recipe.tune.model_copy(update=tune)})
    return tune_targets(recipe, targets, data, Path(tempfile.mkdtemp(dir=folder)), SilentProgress())


def _comparable(records: dict) -> dict:
    """The records without what depends on timing or on the executor: durations, latencies, how they ran."""
    dumped = {}
    for name, record in records.items():
        data = record.model_dump(exclude={"evaluated_by", "latency_measured"})
        for trial in data["trials"]:
            trial.pop("seconds"), trial.pop("latency_ms")
        dumped[name] = data
    return dumped


def _check_same_as_serial(serial: dict, scaled: dict, engine: str) -> None:
    assert _comparable(scaled) == _comparable(serial)
    record = scaled["x86"]
    assert engine in record.evaluated_by and record.latency_measured == LATENCY_AFTERWARDS
    assert all(trial.latency_ms and trial.latency_ms > 0 for trial in record.trials if trial.error is None)
    assert serial["x86"].latency_measured == INLINE_LATENCY


def test_a_process_pool_of_two_workers_finds_what_the_serial_search_finds(prepared):
    # a budget no candidate meets: every tier runs, in waves of two (methods, bias correction, float prefixes)
    serial = _tune(prepared, {"max_kl": 0.0}, workers=1)
    assert len(serial["x86"].trials) == 6 and not serial["x86"].met_budget
    pooled = _tune(prepared, {"max_kl": 0.0}, workers=2)
    _check_same_as_serial(serial, pooled, "local process pool of 2 workers")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def ray_cluster():
    """A one-node Ray cluster (2 CPUs) started with `ray start --head` in its own process group and temp dir,
    killed with that group at the end: `ray stop` would stop every Ray process on the machine."""
    pytest.importorskip("ray")
    port = _free_port()
    temp = Path(tempfile.mkdtemp(prefix="ray-"))  # short: Ray's socket paths must fit in 107 characters
    log = temp / "start.log"
    with log.open("w") as handle:
        process = subprocess.Popen([str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
                                    "--num-cpus=2", f"--port={port}", "--node-ip-address=127.0.0.1",
                                    "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"],
                                   stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + RAY_START_SECONDS
        while "Ray runtime started" not in log.read_text():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        shutil.rmtree(temp, ignore_errors=True)


def test_ray_tasks_on_a_local_cluster_find_what_the_serial_search_finds(prepared, ray_cluster):
    # a budget the first candidate meets: the wave also scores the second method, whose trial is dropped
    serial = _tune(prepared, {"min_top1_agreement": 0.98}, workers=1)
    assert [trial.passed for trial in serial["x86"].trials] == [True]
    on_ray = _tune(prepared, {"min_top1_agreement": 0.98}, ray=ray_cluster)
    _check_same_as_serial(serial, on_ray, f"Ray cluster at {ray_cluster}")
    import ray

    assert not ray.is_initialized()  # the search disconnected from the cluster it connected to


def test_ray_without_the_package_is_one_line_naming_the_extra(recipe_factory, invoke, expect_error, monkeypatch):
    recipe, write = recipe_factory
    path = write(recipe, "no-ray.yaml")
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError, as when not installed
    line = expect_error(invoke("tune", path, "--ray", "auto"), "edgepack tune --ray", "pip install 'edgepack[ray]'")
    assert "'ray'" in line


def test_a_ray_address_nobody_listens_on_is_one_line_before_any_work(recipe_factory, invoke, expect_error):
    pytest.importorskip("ray")
    recipe, write = recipe_factory
    address = f"127.0.0.1:{_free_port()}"
    line = expect_error(invoke("tune", write(recipe, "no-cluster.yaml"), "--ray", address), f"--ray {address}",
                        "no Ray cluster reachable there", "ray start --head")
    assert "trying" not in line


def test_workers_must_be_positive(recipe_factory, invoke):
    recipe, write = recipe_factory
    result = invoke("tune", write(recipe, "zero-workers.yaml"), "--workers", "0")
    assert result.exit_code == 2 and "--workers" in result.output
