"""MLflow parent runs (pipeline/repro.py): one per repro, RUNNING only while a stage works, never left RUNNING."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from pipeline import repro
from pipeline.repro import close_parent, open_parent, repro_owner, stage_parent
from pipeline.tracking import Tracker

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def tracker(project) -> Tracker:
    return Tracker(project, uri=f"sqlite:///{project / 'mlflow.db'}")


def _owner(process: psutil.Process | None = None, pid: int | None = None) -> dict:
    if process is None:
        return {"pid": pid, "started": 1.0, "command": "dvc repro"}  # a process that is gone
    return {"pid": process.pid, "started": process.create_time(), "command": "dvc repro"}


def _status(tracker: Tracker, run_id: str) -> str:
    return tracker.logger.run_state(run_id)["status"]


def _running(tracker: Tracker) -> list[str]:
    experiments = tracker.logger._call("search_experiments")
    runs = tracker.logger._call("search_runs", [e.experiment_id for e in experiments])
    return [r.info.run_id for r in runs if r.info.status == "RUNNING"]


def test_the_owner_is_the_dvc_process_under_dvc_and_the_process_itself_without(tmp_path, monkeypatch):
    monkeypatch.delenv("DVC_STAGE", raising=False)
    assert repro_owner()["pid"] == os.getpid()

    # A stand-in for `dvc repro train`: DVC runs the stage through $SHELL -c with DVC_STAGE set.
    stage = f"{sys.executable} -c 'import json; from pipeline.repro import repro_owner; print(json.dumps(repro_owner()))'"
    fake_dvc = tmp_path / "bin" / "dvc"
    fake_dvc.parent.mkdir()
    fake_dvc.write_text(
        "import json, os, subprocess, sys\n"
        f"out = subprocess.run(['/bin/sh', '-c', {stage!r}], env={{**os.environ, 'DVC_STAGE': 'train'}},\n"
        "                     capture_output=True, text=True, check=True).stdout\n"
        "print(json.dumps({'dvc': os.getpid(), 'owner': json.loads(out)}))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, str(fake_dvc), "repro", "train"], env=env, capture_output=True, text=True,
                         check=True, cwd=tmp_path)
    seen = json.loads(out.stdout)
    assert seen["owner"]["pid"] == seen["dvc"]
    assert seen["owner"]["command"] == "dvc repro train"


def test_stages_of_one_repro_share_a_parent_that_runs_only_while_a_stage_works(tracker, monkeypatch):
    monkeypatch.setattr(repro, "repro_owner", lambda: _owner(psutil.Process()))
    with stage_parent(tracker, "exp") as parent:
        assert _status(tracker, parent) == "RUNNING"
    assert _status(tracker, parent) == "FINISHED"  # a repro that stops here (dvc repro train) is closed

    with stage_parent(tracker, "exp") as again:  # the next stage of the same repro
        assert again == parent and _status(tracker, parent) == "RUNNING"
    assert _status(tracker, parent) == "FINISHED"

    with pytest.raises(SystemExit):
        with stage_parent(tracker, "exp"):
            sys.exit("train stage: 1 of 2 runs failed")
    assert _status(tracker, parent) == "FAILED"
    with stage_parent(tracker, "exp") as after:  # dvc repro --keep-going: logged under it, still FAILED
        assert after == parent and _status(tracker, parent) == "FAILED"
    assert _status(tracker, parent) == "FAILED"
    assert _running(tracker) == []


@pytest.mark.parametrize("end, status", [(ValueError("boom"), "FAILED"), (KeyboardInterrupt(), "KILLED"),
                                         (SystemExit(0), "FINISHED"), (SystemExit(2), "FAILED")])
def test_how_a_stage_ends_decides_its_parents_status(tracker, end, status):
    with pytest.raises(type(end)):
        with stage_parent(tracker, "exp") as parent:
            raise end
    assert _status(tracker, parent) == status


def test_another_repro_gets_a_new_parent_and_closes_a_dead_repros_parent(tracker, monkeypatch):
    owner = {"now": _owner(pid=2 ** 22 + 12345)}  # a repro killed with SIGKILL: its process is gone
    monkeypatch.setattr(repro, "repro_owner", lambda: owner["now"])
    dead = open_parent(tracker, "exp")

    owner["now"] = _owner(psutil.Process().parent())  # a repro still alive elsewhere: left alone
    alive = open_parent(tracker, "exp")
    assert alive != dead and _status(tracker, dead) == "KILLED"

    owner["now"] = _owner(psutil.Process())
    with stage_parent(tracker, "exp") as mine:
        assert mine not in (dead, alive)
    assert _status(tracker, alive) == "RUNNING" and _status(tracker, mine) == "FINISHED"
    close_parent(tracker, "exp")  # not this repro's parent any more: nothing happens
    assert _status(tracker, alive) == "RUNNING"
    tracker.end_parent(alive)
