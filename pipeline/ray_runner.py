"""Run many runs (trainings, evaluations, trials) in parallel as Ray tasks.

    with ray_session(compute, PROJECT_ROOT):
        report = run_all(train_one, configs, compute, labels)
    report.raise_if_failed()

Every run is one Ray task declaring ``compute.cpus_per_run`` CPUs and
``compute.gpus_per_run`` GPUs, so Ray places it on any node of the cluster
that has them free; a fraction (0.25) lets several small runs share a card.
``gpus_per_run: auto`` (the default) gives each run one whole GPU when the
cluster has GPUs and none otherwise (:func:`resolve_gpus_per_run`).

Where the runs go is ``compute.ray_address``, the only key a user changes to
scale out:

* ``null``: a private local Ray is started for the session and stopped at its
  end. ``address="local"`` is passed so that neither ``RAY_ADDRESS`` nor a
  ``ray start`` cluster on this machine is picked up by accident.
* ``auto`` or ``host:port`` (or ``ray://host:10001``): the driver joins that
  cluster and on exit only disconnects; the cluster keeps running. The project
  must be importable on every node (e.g. ``pip install -e .`` of a checkout on
  a shared filesystem): shipping the working directory with
  ``runtime_env={"working_dir": ...}`` would upload the data and runs too.
  Run directories and prepared data must be on a filesystem every node sees
  at the same absolute path.
  ``num_cpus``, ``dashboard`` and ``temp_dir`` only concern a local Ray and are
  ignored, since the cluster's nodes declare their own. Auth is left to the
  user's environment: for a cluster with token auth, export
  ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN`` (or ``RAY_AUTH_TOKEN_PATH``).

What a local Ray needs to stay inside the project and offline (Ray 2.60):

* No dashboard unless ``compute.dashboard``: no web UI, nothing on port 8265.
  Ray still starts a stripped dashboard process (usage-stats module only) and
  its per-node agents, which it needs for runtime environments.
* Temp files (logs, sockets, spilled objects) under ``<project>/<temp_dir>``
  unless that path is too long for Ray's Unix sockets (see :func:`temp_dir_for`).
* No telemetry: ``RAY_USAGE_STATS_ENABLED=0``.
* Auth: Ray 2.60 turns token authentication on for a new local cluster and,
  if no token is around, writes one to ``~/.ray/auth_token`` (outside the
  project, world-readable). The session instead hands Ray a random token
  made for it in ``RAY_AUTH_TOKEN``: auth stays on (the GCS listens on every
  interface), nothing is written and nothing needs the network. A user's own
  token (``RAY_AUTH_TOKEN`` / ``RAY_AUTH_TOKEN_PATH``) or ``RAY_AUTH_MODE=disabled``
  wins; ``RAY_AUTH_MODE=token`` alone still gets the session's token, since Ray
  would otherwise write one to ``~/.ray/auth_token``.
  Environment changes are undone when the session ends.

Inside a task:

* Ray sets ``CUDA_VISIBLE_DEVICES`` to the GPUs assigned to the task, so a run
  with ``device: auto`` uses its own card as ``cuda:0``; ``device: cuda:N``
  with N > 0 is refused before any run starts (:func:`check_ray_device`). Ray
  does not cap the memory of runs sharing a card: pick the fraction so that
  they fit. Ray 2.60 leaves the variable alone for tasks with no GPU, so those
  would see every card; the session sets ``RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=1``
  so that a run with ``gpus_per_run: 0`` sees none and really runs on the CPU.
  The override only acts on tasks assigned no GPU: a task holding GPUs (or a
  fraction of one) gets their ids as usual.
* A task holding GPUs runs in a fresh worker process that exits after it
  (``max_calls=1``, see :func:`remote_variants`): a reused worker would keep the
  CUDA context of its first task's card and pile later runs onto it.
* Ray sets ``OMP_NUM_THREADS`` to the task's CPUs (at least 1), so torch uses
  as many threads as the run declared instead of all the machine's cores.
* On a local Ray the project root leads ``PYTHONPATH``; every worker logs at
  INFO (:func:`configure_worker_logging`), so ``trip``'s progress lines reach
  the driver, prefixed with the run's label.

Failures: a run that raises is reported with its exception type, message and
remote traceback, and is never re-run (``retry_exceptions=False``); the other
runs go on. A run whose worker process dies (killed for memory, segfault, lost
node) is retried once (``max_retries=1``): a training run resumes from its
last checkpoint, so the retry continues rather than starts over.

Ray is imported only inside ``pipeline/``; the ``trip`` library never imports it.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import logging
import os
import re
import secrets
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import ray
from tqdm import tqdm

from trip.config import NON_EMPTY, POSITIVE, ConfigError, is_number

log = logging.getLogger("pipeline.ray_runner")

_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # Ray colours the task name in its tracebacks

# The longest Unix socket Ray creates under its temp dir is
# <temp>/session_<YYYY-MM-DD_HH-MM-SS_ffffff>_<pid>/sockets/plasma_store[.N]
# and the kernel refuses socket paths longer than sun_path (108 bytes on Linux).
_SOCKET_PATH_MAX = (104 if sys.platform == "darwin" else 108) - 1
_SOCKET_TAIL = len("/session_2000-01-01_00-00-00_000000_") + len("4194304") + len("/sockets/plasma_store.99")


class PipelineError(RuntimeError):
    """One or more runs of a stage failed (the message names each of them)."""


@dataclass
class ComputeConfig:
    """The ``compute`` section of ``params.yaml``; validated as ``build_dataclass`` builds it."""

    # null: start a local Ray; "auto" or host:port: join a cluster
    ray_address: str | None = field(default=None, metadata=NON_EMPTY)
    cpus_per_run: float = field(default=1.0, metadata=POSITIVE)
    gpus_per_run: float | str = "auto"  # auto: 1 if the cluster has GPUs, else 0; 0.25 puts four runs on one GPU
    # cap on runs in flight; null: as many as the resources allow
    max_parallel: int | None = field(default=None, metadata=POSITIVE)
    # local Ray only: CPUs it may use; null: all of the machine's
    num_cpus: int | None = field(default=None, metadata=POSITIVE)
    dashboard: bool = False  # local Ray only
    temp_dir: str = field(default=".ray", metadata=NON_EMPTY)  # local Ray only: relative to the project root

    @property
    def is_local(self) -> bool:
        return self.ray_address in (None, "local")

    def check(self, prefix: str) -> None:
        gpus = self.gpus_per_run
        if gpus != "auto" and (not is_number(gpus) or gpus < 0):
            raise ConfigError(f"{prefix}gpus_per_run: must be auto or a number >= 0, got {gpus!r}")
        if gpus != "auto" and gpus > 1 and gpus != int(gpus):  # Ray's rule: a fraction of one card or whole cards
            raise ConfigError(f"{prefix}gpus_per_run: must be a fraction of one GPU or a whole number, got {gpus!r}")
        if self.is_local and self.num_cpus is not None and self.cpus_per_run > self.num_cpus:
            raise ConfigError(f"{prefix}cpus_per_run: {self.cpus_per_run} exceeds {prefix}num_cpus "
                              f"({self.num_cpus}): no run could start")


def resolve_gpus_per_run(setting: float | str, cluster_gpus: float) -> float:
    """The GPUs each run's task declares, given the cluster's total ``GPU`` resource.

    ``auto``: one whole GPU per run when the cluster has any, else 0 (the CPU).
    A whole card rather than a share: only the user knows whether several runs
    fit in one card's memory (Ray does not cap it), and says so with a number.
    Runs then go as many at a time as there are GPUs (and free CPUs). A cluster
    that only gains GPU nodes by autoscaling has none at the start: give it a number.
    """
    if setting == "auto":
        return 1.0 if cluster_gpus >= 1 else 0.0
    return float(setting)


def gpus_per_run(compute: ComputeConfig) -> float:
    """``compute.gpus_per_run`` resolved against the connected cluster (needs an open session)."""
    return resolve_gpus_per_run(compute.gpus_per_run, ray.cluster_resources().get("GPU", 0.0))


def check_ray_device(device: str, gpus: float | str | None = None, where: str = "") -> None:
    """Refuse, naming the key, a run ``device`` that cannot work in a Ray task holding ``gpus`` GPUs.

    Ray hands a task its GPUs through ``CUDA_VISIBLE_DEVICES``, numbered from 0,
    so ``cuda:1`` would name a card the task does not see (or another run's).
    With 0 GPUs per run the task sees no card at all, so ``cuda`` fails there.
    ``gpus``: the resolved number, or ``auto``/None when not known yet.
    """
    index = device.removeprefix("cuda:")
    if device.startswith("cuda:") and index.isdigit() and int(index) > 0:
        raise ConfigError(f"device: {device}{where}: a Ray task sees the GPU it was given as cuda:0; "
                          f"use device: auto or cuda (compute.gpus_per_run decides how many GPUs a run gets)")
    if device.startswith("cuda") and is_number(gpus) and gpus == 0:
        raise ConfigError(f"device: {device}{where} needs a GPU, but compute.gpus_per_run gives runs none "
                          f"(0), so their Ray tasks see no card; use device: auto or give runs GPUs")


# -- the session -----------------------------------------------------------------------
def temp_dir_for(compute: ComputeConfig, project_root: str | Path) -> Path:
    """The local Ray's temp dir: ``<project>/<temp_dir>``, or a short one if that is too long.

    Ray puts its Unix sockets up to 67 bytes below the temp dir and fails to
    start if a socket path exceeds 107 bytes, so the temp dir may have at most
    40 bytes: ``<project>/.ray`` fits for a project path of up to 35. The
    fallback ``/tmp/ray-<hash>`` is distinct per user and project, so that
    concurrent projects never share a session directory.
    """
    root = Path(project_root).resolve()
    wanted = root / compute.temp_dir  # an absolute temp_dir replaces the root
    if len(os.fsencode(wanted)) + _SOCKET_TAIL <= _SOCKET_PATH_MAX:
        return wanted
    digest = hashlib.sha256(f"{os.getuid()}:{root}".encode()).hexdigest()[:12]
    short = Path("/tmp") / f"ray-{digest}"
    log.warning(
        "Ray temp dir %s is too long for Ray's Unix sockets (%d-byte limit); using %s instead "
        "(set compute.temp_dir to a short absolute path to choose another)",
        wanted, _SOCKET_PATH_MAX, short,
    )
    return short


def _session_env(compute: ComputeConfig) -> dict[str, str]:
    env = {"RAY_USAGE_STATS_ENABLED": "0"}
    own_token = any(var in os.environ for var in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"))
    auth_off = os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled"
    if compute.is_local and not own_token and not auth_off:  # else Ray writes a token to ~/.ray/auth_token
        env["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    return env


def _reload_auth() -> None:
    """Make this process's Ray read the auth mode and token from the environment again.

    Ray caches both for the life of the process (RayConfig, the C++ token loader):
    a token cached by an earlier session, or by a plain ``ray.init`` before or after
    this one, would not match what the new cluster's processes read from the
    environment, and the driver could not connect. Order as in Ray's own tests.
    """
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


@contextlib.contextmanager
def _environment(updates: dict[str, str]) -> Iterator[None]:
    """Set ``updates`` for the session; afterwards restore them and what Ray set itself."""
    keys = set(updates) | {"RAY_AUTH_MODE", "RAY_USAGE_STATS_ENABLED"}
    saved = {key: os.environ.get(key) for key in keys}
    os.environ.update(updates)
    _reload_auth()
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _reload_auth()


def _worker_env(project_root: Path | None) -> dict[str, str]:
    """Environment of every worker of the job: GPU hiding, and the project importable locally."""
    env = {"RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "1"}
    if project_root is not None:
        paths = [str(project_root)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def configure_worker_logging() -> None:
    """Run by Ray in each worker it starts, so that INFO lines of ``trip.*`` reach the driver."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")


def _runtime_env(project_root: Path | None) -> dict:
    hook = f"{__name__}.configure_worker_logging"  # by name: importable wherever the project is installed
    return {"env_vars": _worker_env(project_root), "worker_process_setup_hook": hook}


def _init_args(compute: ComputeConfig, project_root: Path) -> dict:
    if not compute.is_local:
        if compute.num_cpus is not None or compute.dashboard:
            log.info("compute.num_cpus and compute.dashboard only apply to a local Ray; the cluster decides")
        return {"address": compute.ray_address, "log_to_driver": True, "runtime_env": _runtime_env(None)}
    temp_dir = temp_dir_for(compute, project_root)
    temp_dir.mkdir(parents=True, exist_ok=True)
    return {
        "address": "local",
        "num_cpus": compute.num_cpus,
        "include_dashboard": compute.dashboard,
        "_temp_dir": str(temp_dir),
        "log_to_driver": True,
        "runtime_env": _runtime_env(project_root),
    }


@contextlib.contextmanager
def ray_session(compute: ComputeConfig, project_root: str | Path) -> Iterator[Any]:
    """Connect to (or start) Ray for the body; yields what ``ray.init`` returned.

    On exit, also through an exception or Ctrl-C, ``ray.shutdown()`` stops a
    local Ray with all its processes, or just disconnects from a cluster.
    """
    if ray.is_initialized():
        raise PipelineError("a Ray session is already open in this process; close it before opening another")
    root = Path(project_root).resolve()
    with _environment(_session_env(compute)):
        try:
            start = time.perf_counter()
            context = ray.init(**_init_args(compute, root))
            where = "local Ray" if compute.is_local else f"Ray cluster at {compute.ray_address}"
            log.info("%s ready in %.1fs: %s", where, time.perf_counter() - start, ray.cluster_resources())
            log.info("compute.gpus_per_run: %s -> %g GPU per run", compute.gpus_per_run, gpus_per_run(compute))
            yield context
        finally:
            # Also after a failed ray.init: it may have started processes before failing.
            ray.shutdown()


# -- running ---------------------------------------------------------------------------
@dataclass
class FailureInfo:
    error: str  # "<original exception type>: <message>"
    traceback: str  # the worker's traceback; for a dead worker, Ray's account of it


@dataclass
class RunReport:
    results: dict[str, Any] = field(default_factory=dict)  # label -> return value, in submission order
    failures: dict[str, FailureInfo] = field(default_factory=dict)
    wall_seconds: float = 0.0

    def raise_if_failed(self) -> None:
        """Raise a PipelineError naming every failed run, one line each."""
        if not self.failures:
            return
        total = len(self.results) + len(self.failures)
        lines = [f"  {label}: {(info.error.splitlines() or [''])[0]}" for label, info in self.failures.items()]
        raise PipelineError(f"{len(self.failures)} of {total} runs failed:\n" + "\n".join(lines))


def run_all(
    fn: Callable[[Any], Any],
    items: list,
    compute: ComputeConfig,
    labels: list[str],
    progress: bool = True,
) -> RunReport:
    """Run ``fn(item)`` for every item as a Ray task, wait for all, report each outcome.

    Needs an open :func:`ray_session`. At most ``compute.max_parallel`` tasks are in
    flight; without it the free CPUs and GPUs of the cluster decide. A failure is
    logged with its traceback when it arrives and never stops the other tasks.
    Each task is named by its label, which prefixes its output in the driver's log.
    Ctrl-C propagates; closing the session then ends the tasks still running,
    since tasks die with their owner, the driver, on a cluster too.
    """
    if len(labels) != len(items) or len(set(labels)) != len(labels):
        raise ValueError(f"run_all: needs one distinct label per item, got {len(labels)} labels for {len(items)} items")
    report = RunReport()
    if not items:
        return report
    gpus = gpus_per_run(compute)
    for label, item in zip(labels, items):  # before any run starts
        for device in _devices_of(item):
            check_ray_device(device, gpus, f" (run {label})")
    _check_fits(compute, gpus)
    fn_ref = ray.put(fn)  # shipped once, not with every task
    task, options = pick_task(_CALL, compute.cpus_per_run, gpus)
    waiting = collections.deque(zip(labels, items))
    limit = compute.max_parallel or len(items)
    in_flight: dict[ray.ObjectRef, str] = {}
    start = time.perf_counter()
    with tqdm(total=len(items), desc="runs", unit="run", disable=not progress) as bar:
        while waiting or in_flight:
            while waiting and len(in_flight) < limit:
                label, item = waiting.popleft()
                in_flight[task.options(name=label, **options).remote(fn_ref, item)] = label
            [done], _ = ray.wait(list(in_flight), num_returns=1)
            _collect(report, in_flight.pop(done), done)
            bar.update()
            bar.set_postfix(failed=len(report.failures))
    report.wall_seconds = time.perf_counter() - start
    report.results = {label: report.results[label] for label in labels if label in report.results}
    return report


def remote_variants(fn: Callable) -> dict[bool, Any]:
    """``fn`` as a Ray remote function, by whether its task holds GPUs: {False: reusable, True: single-use}.

    A GPU task's worker must exit after it (``max_calls=1``): a reused worker
    keeps the CUDA context made under its first task's ``CUDA_VISIBLE_DEVICES``,
    so later runs pile onto that card, and idle workers hold GPU memory. Ray
    sets max_calls=1 itself only when ``num_gpus`` is in the decorator, not when
    it comes through ``.options()``, and refuses ``max_calls`` in ``.options()``
    (Ray 2.60): so the GPU variant declares it in the decorator.
    """
    return {False: ray.remote(fn), True: ray.remote(max_calls=1)(fn)}


def pick_task(variants: dict[bool, Any], cpus: float, gpus: float) -> tuple[Any, dict]:
    """The remote function and ``.options()`` of one run's task holding ``cpus`` CPUs and ``gpus`` GPUs."""
    options = {
        "num_cpus": cpus,
        "num_gpus": gpus,
        "max_retries": 1,  # only for a dead worker: the run resumes from its checkpoint
        "retry_exceptions": False,  # a run that raised would raise again; never re-run it silently
    }
    return variants[gpus > 0], options


def _call(fn: Callable[[Any], Any], item: Any) -> Any:
    """The task: any picklable callable (a function, a functools.partial, a bound method)."""
    return fn(item)


_CALL = remote_variants(_call)


def _devices_of(item: Any) -> list[str]:
    """The ``device`` settings an item of a stage carries: its own ``device``, its ``cfg``'s, a tuple's parts'."""
    if isinstance(item, tuple):
        return [d for part in item for d in _devices_of(part)]
    own = getattr(item, "device", None)
    return ([own] if isinstance(own, str) else []) + (_devices_of(item.cfg) if hasattr(item, "cfg") else [])


def _collect(report: RunReport, label: str, ref: ray.ObjectRef) -> None:
    try:
        report.results[label] = ray.get(ref)
        return
    except ray.exceptions.RayTaskError as err:
        # str(err) is the worker's traceback with Ray's own frames left out.
        cause = err.cause if err.cause is not None else err
        info = FailureInfo(f"{type(cause).__name__}: {cause}", _ANSI.sub("", str(err)))
    except ray.exceptions.RayError as err:  # the worker or its node died, the task could not run, ...
        first = (str(err).splitlines() or [""])[0]
        info = FailureInfo(f"{type(err).__name__}: {first}", str(err))
    except Exception as err:  # e.g. a result that cannot be unpickled in the driver
        info = FailureInfo(f"{type(err).__name__}: {err}", traceback.format_exc())
    report.failures[label] = info
    log.error("run %s failed: %s\n%s", label, info.error, info.traceback)


def _check_fits(compute: ComputeConfig, gpus: float) -> None:
    """Fail fast when no node can ever hold one run: Ray would keep such tasks pending forever."""
    need = {"CPU": compute.cpus_per_run, "GPU": gpus}
    nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
    if any(all(res.get(k, 0.0) >= v for k, v in need.items() if v) for res in nodes):
        return
    short = "GPU" if not any(res.get("GPU", 0.0) >= need["GPU"] for res in nodes) else "CPU"
    most = max((res.get(short, 0.0) for res in nodes), default=0.0)
    message = f"a run needs {need[short]} {short} but no Ray node has more than {most}"
    if compute.is_local:
        raise ConfigError(f"compute.{short.lower()}s_per_run: {message}")
    log.warning("%s; the runs wait until the cluster gains such a node", message)
