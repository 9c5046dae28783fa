"""One MLflow parent run per ``dvc repro``, shared by the stages it runs.

DVC runs each stage in its own process, so the parent's id is kept in a small
file under ``.dvc/tmp``: the first stage that logs opens the parent, later
stages of the same repro reuse it while it is still running, and the
``report`` stage (the last one) closes it. A stage that fails closes it as
FAILED, so the next ``dvc repro`` opens a fresh one.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from pipeline.tracking import Tracker


def _marker(tracker: Tracker, experiment: str) -> Path:
    store = hashlib.sha256(tracker.uri.encode()).hexdigest()[:8]  # one marker per tracking store
    return tracker.project_root / ".dvc" / "tmp" / f"mlflow-parent-{experiment}-{store}.json"


def _is_running(tracker: Tracker, run_id: str) -> bool:
    try:
        return tracker.logger.run_state(run_id).get("status") == "RUNNING"
    except Exception:  # deleted, or the store was replaced: open a new parent
        return False


def current_parent(tracker: Tracker, experiment: str) -> str:
    """The open parent run of this repro, or a new one."""
    marker = _marker(tracker, experiment)
    if marker.exists():
        parent = json.loads(marker.read_text())["run_id"]
        if _is_running(tracker, parent):
            return parent
    parent = tracker.start_parent(experiment, f"dvc repro {time.strftime('%Y-%m-%d %H:%M:%S')}",
                                  {"source": "dvc repro"})
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"run_id": parent}))
    return parent


def close_parent(tracker: Tracker, experiment: str, status: str = "FINISHED") -> None:
    marker = _marker(tracker, experiment)
    if marker.exists():
        parent = json.loads(marker.read_text())["run_id"]
        if _is_running(tracker, parent):
            tracker.end_parent(parent, status)
        marker.unlink()
