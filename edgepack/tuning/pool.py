"""Where tuning candidates run: in the searching process, in a local process pool, or on a Ray cluster.

One small interface, `submit(job) -> concurrent.futures.Future` and `close()`, over engines that do the
queueing and dispatching themselves: `concurrent.futures.ProcessPoolExecutor` (spawn context: a forked
child of a process whose torch already started threads can deadlock) and Ray tasks (`ray.remote`, whose
ObjectRef gives a Future). edgepack keeps no scheduler of its own.

- `InProcess` (one worker): candidates one at a time in the searching process, exactly the serial
  search; each candidate's latency is measured right after it is built, with nothing else running.
- `LocalPool` (`--workers N`, N > 1): N spawned processes, each with `threads // N` runtime threads.
- `RayCluster` (`--ray ADDRESS` or `--ray auto`): connects to a running cluster (`ray start --head`)
  and disconnects at the end if it connected. Every node needs edgepack with the model's extras
  installed, and a filesystem shared with the searching process for the scratch folder (TMPDIR):
  jobs pass paths (edgepack.tuning.candidate). Ray's own output goes to its session logs, not the
  terminal (`log_to_driver=False`, ERROR-level driver logging).

Latency measured while other candidates run is wrong, so a concurrent engine only scores candidates;
the searching process measures the latency of the trials kept afterwards, one at a time
(edgepack.tuning.search), and the record says which way it was measured.

Default workers: 1 on a host with at most 2 cores. Measured on a 2-core AMD EPYC (AVX2) under a load
average of 13 from other work, `edgepack tune` of the MNIST example for x86 (5 candidates of 1-2 s
each): 65 s with one worker, 73 s with two; the first wave waited 13 s for the spawned workers to
import torch and onnxruntime, more than two cores shared by two candidates gained. On larger hosts,
half the cores (at most 4) run candidates, with the recipe's threads divided among them.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import socket
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Iterator, Optional, Protocol

from edgepack.errors import ConfigError, MissingDependencyError, describe
from edgepack.tuning.candidate import CandidateJob, CandidateResult, evaluate, run_in_worker

MAX_DEFAULT_WORKERS = 4
PROBE_SECONDS = 5.0  # to connect to a --ray HOST:PORT before handing it to Ray


class CandidateExecutor(Protocol):
    """Runs candidate jobs; `concurrent` engines leave latency to be measured afterwards."""

    workers: int
    threads: int  # runtime threads of each job
    concurrent: bool
    description: str

    def submit(self, job: CandidateJob) -> "Future[CandidateResult]":
        """Start `job`; its Future gives the CandidateResult."""

    def close(self) -> None:
        """Release the workers."""


class InProcess:
    """One candidate at a time in the searching process, latency measured inline."""

    workers, concurrent = 1, False

    def __init__(self, threads: int):
        self.threads = threads
        self.description = "one candidate at a time in the main process"

    def submit(self, job: CandidateJob) -> "Future[CandidateResult]":
        """Run `job` now; the Future is already done."""
        future: Future[CandidateResult] = Future()
        future.set_result(evaluate(job, measure_latency=True))
        return future

    def close(self) -> None:
        """Nothing to release."""


class LocalPool:
    """A local process pool (spawned workers)."""

    concurrent = True

    def __init__(self, workers: int, threads: int):
        self.workers, self.threads = workers, max(1, threads // workers)
        self.description = f"local process pool of {workers} workers, {self.threads} thread(s) each"
        self._pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))

    def submit(self, job: CandidateJob) -> "Future[CandidateResult]":
        """Queue `job` on the pool."""
        return self._pool.submit(run_in_worker, job)

    def close(self) -> None:
        """Stop the workers, dropping jobs not started."""
        self._pool.shutdown(wait=True, cancel_futures=True)


def require_ray(address: str, what: str = "edgepack tune --ray"):
    """The ray module, or a MissingDependencyError naming the extra; a HOST:PORT address that accepts no
    connection is a ConfigError here, at once, where `ray.init` would retry for minutes."""
    try:
        import ray
    except ImportError:
        raise MissingDependencyError(what, "ray", "ray") from None
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if address != "auto" and host and port.isdigit():
        try:
            socket.create_connection((host, int(port)), timeout=PROBE_SECONDS).close()
        except OSError as exc:
            raise ConfigError(f"--ray {address}: no Ray cluster reachable there ({describe(exc)}); start one with "
                              f"`ray start --head`") from None
    return ray


class RayCluster:
    """Ray tasks on a running cluster, one CPU per thread of a job."""

    concurrent = True

    def __init__(self, address: str, workers: Optional[int], threads: int):
        self._ray = require_ray(address)
        self._connected = not self._ray.is_initialized()
        if self._connected:
            try:
                self._ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
            except ConnectionError as exc:
                raise ConfigError(f"--ray {address}: no Ray cluster reachable there ({describe(exc)}); start one "
                                  f"with `ray start --head`") from None
        cpus = int(self._ray.cluster_resources().get("CPU", 1))
        self.workers = workers or max(1, cpus)
        self.threads = max(1, threads // self.workers)
        self.description = (f"Ray cluster at {address} ({cpus} CPUs), {self.workers} workers, "
                            f"{self.threads} thread(s) each")
        self._task = self._ray.remote(max_retries=0)(run_in_worker).options(num_cpus=self.threads)

    def submit(self, job: CandidateJob) -> "Future[CandidateResult]":
        """Submit `job` as a Ray task."""
        return self._task.remote(job).future()

    def close(self) -> None:
        """Disconnect, if this search connected."""
        if self._connected:
            self._ray.shutdown()


def default_workers(cores: Optional[int] = None) -> int:
    """1 on hosts with at most 2 cores, else half the cores up to MAX_DEFAULT_WORKERS (see the module doc)."""
    cores = cores or len(os.sched_getaffinity(0))
    return 1 if cores <= 2 else min(MAX_DEFAULT_WORKERS, cores // 2)


@contextlib.contextmanager
def open_executor(*, workers: Optional[int], ray_address: Optional[str], threads: int) -> Iterator[CandidateExecutor]:
    """The engine the options ask for, closed when the block ends."""
    executor: CandidateExecutor
    if ray_address is not None:
        executor = RayCluster(ray_address, workers, threads)
    else:
        count = workers or default_workers()
        executor = LocalPool(count, threads) if count > 1 else InProcess(threads)
    try:
        yield executor
    finally:
        executor.close()
