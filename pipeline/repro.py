"""One MLflow parent run per ``dvc repro``, shared by the stages it runs.

DVC runs each stage in its own process, so the parent's id is kept in a small
file under ``.dvc/tmp``: the first stage that logs opens the parent, later
stages of the same repro reuse it while it is still running, and the
``report`` stage (the last one) closes it. A stage that fails closes it as
FAILED, so the next ``dvc repro`` opens a fresh one.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from pipeline.tracking import Tracker


def _marker(project_root: Path, experiment: str) -> Path:
    return project_root / ".dvc" / "tmp" / f"mlflow-parent-{experiment}.json"


def current_parent(tracker: Tracker, experiment: str) -> str:
    """The open parent run of this repro, or a new one."""
    marker = _marker(tracker.project_root, experiment)
    if marker.exists():
        parent = json.loads(marker.read_text())["run_id"]
        if tracker.logger.run_state(parent).get("status") == "RUNNING":
            return parent
    parent = tracker.start_parent(experiment, f"dvc repro {time.strftime('%Y-%m-%d %H:%M:%S')}",
                                  {"source": "dvc repro"})
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"run_id": parent}))
    return parent


def close_parent(tracker: Tracker, experiment: str, status: str = "FINISHED") -> None:
    marker = _marker(tracker.project_root, experiment)
    if marker.exists():
        tracker.end_parent(json.loads(marker.read_text())["run_id"], status)
        marker.unlink()
