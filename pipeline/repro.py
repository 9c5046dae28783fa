"""One MLflow parent run per ``dvc repro``, shared by the stages it runs, and never left RUNNING.

Which repro a stage belongs to: DVC runs each stage command in a process of its own, under the
one ``dvc`` process of the repro (``dvc repro``, ``dvc exp run``), and sets ``DVC_STAGE`` in the
stage's environment. That ``dvc`` process, by pid and start time, is the repro's *owner*. A stage
run without DVC (``python -m stages.train``, or stage functions called from Python) is owned by
its own process. The parent's id and owner are kept in a small file under ``.dvc/tmp``, one per
experiment and tracking store.

Lifetime: every stage that logs opens the parent when it starts and closes it when it ends
(:func:`stage_parent`). The first stage of a repro creates it; a later stage of the same owner
sets it RUNNING again and logs under it. A stage that ends normally closes it FINISHED; a failed
stage closes it FAILED (and a failed parent stays FAILED: later stages of that repro log under
it without reopening it); Ctrl-C closes it KILLED. So the parent is RUNNING only while a stage
of its repro works, and it ends FINISHED with the last stage of its repro, whichever that is
(DVC skips unchanged stages, and ``dvc repro train`` stops early). A stage run on its own gets a
parent of its own, and a later repro never reuses an earlier one's parent; a parent still
RUNNING whose owner has died (killed with SIGKILL) is closed KILLED by the next repro.
"""

from __future__ import annotations

import contextlib
import json
import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Iterator

from pipeline.tracking import Tracker

_log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- the owner

def _is_dvc(cmdline: list[str]) -> bool:
    """Whether a command line runs DVC: ``.../dvc repro``, ``python .../bin/dvc exp run``, ``python -m dvc``."""
    head = cmdline[:3]
    return any(Path(arg).name == "dvc" for arg in head[:2]) or head[1:3] == ["-m", "dvc"]


def _owner_process():
    """The process that owns this stage's repro: the nearest ``dvc`` ancestor under DVC, else this one."""
    import psutil

    me = psutil.Process()
    if "DVC_STAGE" not in os.environ:
        return me
    for process in me.parents():
        try:
            if _is_dvc(process.cmdline()):
                return process
        except psutil.Error:
            continue
    return me.parent() or me  # DVC_STAGE set by hand, or DVC started oddly: the caller at least


def repro_owner() -> dict:
    """``{"pid", "started", "command"}`` of the owner (see the module docstring)."""
    process = _owner_process()
    try:
        cmdline = process.cmdline()
    except Exception:
        cmdline = []
    return {"pid": process.pid, "started": process.create_time(), "command": _describe(cmdline)}


def _describe(cmdline: list[str]) -> str:
    """``dvc exp run -S seeds=[0]`` or ``python -m stages.train``: the command without interpreter paths."""
    args = list(cmdline)
    if args and Path(args[0]).name.startswith("python") and len(args) > 1 and not args[1].startswith("-"):
        args = args[1:]  # a console script run by its interpreter
    if args:
        args[0] = Path(args[0]).name
    text = " ".join(args)
    return text if len(text) <= 200 else text[:199] + "…"


def _alive(owner: dict) -> bool:
    import psutil

    try:
        return abs(psutil.Process(owner["pid"]).create_time() - owner["started"]) < 1e-3
    except (psutil.Error, KeyError, TypeError):
        return False


def _same(a: dict | None, b: dict) -> bool:
    return bool(a) and a.get("pid") == b["pid"] and abs(a.get("started", 0) - b["started"]) < 1e-3


# ----------------------------------------------------------------------------- the marker

def _marker(tracker: Tracker, experiment: str) -> Path:
    store = hashlib.sha256(tracker.uri.encode()).hexdigest()[:8]  # one marker per tracking store
    return tracker.project_root / ".dvc" / "tmp" / f"mlflow-parent-{experiment}-{store}.json"


def _read_marker(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _status(tracker: Tracker, run_id: str) -> str | None:
    try:
        return tracker.logger.run_state(run_id).get("status")
    except Exception:  # deleted, or the store was replaced
        return None


# ----------------------------------------------------------------------------- open and close

def open_parent(tracker: Tracker, experiment: str) -> str:
    """The parent run of this stage's repro, RUNNING unless it already FAILED; created if needed."""
    owner, marker = repro_owner(), _marker(tracker, experiment)
    known = _read_marker(marker)
    parent = known.get("run_id")
    status = _status(tracker, parent) if parent else None
    if status is not None and _same(known.get("owner"), owner):
        if status == "FINISHED":
            tracker.logger.set_running(parent)
        return parent
    if status == "RUNNING" and not _alive(known.get("owner") or {}):
        tracker.end_parent(parent, "KILLED")  # its repro died without closing it
        _log.info("closed MLflow parent %s as KILLED: its repro ended without closing it", parent)
    tags = {"source": "dvc" if "DVC_STAGE" in os.environ else "stage", "command": owner["command"]}
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp_name"] = os.environ["DVC_EXP_NAME"]
    parent = tracker.start_parent(experiment, f"{owner['command'] or 'stage'} {time.strftime('%Y-%m-%d %H:%M:%S')}",
                                  tags)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"run_id": parent, "owner": owner}))
    return parent


def close_parent(tracker: Tracker, experiment: str, status: str = "FINISHED") -> None:
    """End this repro's parent with ``status`` if it is RUNNING (FAILED also ends a FINISHED one).

    Does nothing to a parent of another repro.
    """
    known = _read_marker(_marker(tracker, experiment))
    parent = known.get("run_id")
    if not parent or not _same(known.get("owner"), repro_owner()):
        return
    current = _status(tracker, parent)
    if current == "RUNNING" or (status == "FAILED" and current == "FINISHED"):
        tracker.end_parent(parent, status)


@contextlib.contextmanager
def stage_parent(tracker: Tracker, experiment: str) -> Iterator[str]:
    """Open this repro's parent for the block (:func:`open_parent`); close it as the block ends.

    FINISHED when the block ends normally (or exits with status 0), FAILED on an exception or a
    non-zero exit, KILLED on Ctrl-C.
    """
    parent = open_parent(tracker, experiment)
    status = "FAILED"
    try:
        yield parent
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except SystemExit as exc:
        status = "FINISHED" if exc.code in (None, 0) else "FAILED"
        raise
    finally:
        close_parent(tracker, experiment, status)
