"""DVC experiments hold their metrics: `dvc exp show` compares them and `dvc exp apply` restores them.

The metrics file must be one git tracks (declared under `metrics:` with `cache: false`, not
git-ignored): `dvc exp run` commits the workspace's git-visible changes, so a git-ignored, uncached
file is in no experiment, and `dvc exp show` has `!` in every metric column. A full tiny repro
per experiment would take minutes; instead a one-stage dvc.yaml takes the real report stage's
`outs` and `metrics` declarations, the project's .gitignore and params.yaml, and writes the
metrics file with the report stage's own writer, :func:`pipeline.report.write_metrics`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]

STAGE = '''\
from pathlib import Path

import yaml

from pipeline.report import write_metrics

params = yaml.safe_load(Path("params.yaml").read_text())
result = {"run": {"model": "vae", "prior": "normal", "learnable": False, "dataset": "shapes", "seed": 0},
          "fid": {"value": params["fake_fid"]}}
out = Path(params["report_root"])
(out / params["profile"]).mkdir(parents=True, exist_ok=True)
(out / params["profile"] / "README.md").write_text("report\\n")
write_metrics(out / f"metrics_{params['profile']}.json", [result])
'''


def _project(tmp_path: Path) -> tuple[Path, dict, dict]:
    """A git+DVC repository with the one-stage pipeline, committed; its params and environment."""
    repo = tmp_path / "repo"
    repo.mkdir()
    real = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    report = real["stages"]["report"]
    stage = {"cmd": "python write_metrics.py", "deps": ["write_metrics.py"], "params": ["fake_fid"],
             "outs": report["outs"], "metrics": report["metrics"]}
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"vars": real["vars"], "stages": {"report": stage}}))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    (repo / "params.yaml").write_text(yaml.safe_dump({**params, "fake_fid": 1.0}))
    (repo / "write_metrics.py").write_text(STAGE)
    shutil.copy(ROOT / ".gitignore", repo / ".gitignore")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": str(ROOT), "DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": str(tmp_path / "dvc-site"),
           "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com",
           "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.com"}
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "base"]):
        subprocess.run(cmd, cwd=repo, env=env, check=True, capture_output=True)
    return repo, params, env


def _dvc(repo: Path, env: dict, *args: str) -> str:
    done = subprocess.run(["dvc", *args], cwd=repo, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr + done.stdout
    return done.stdout


def test_dvc_exp_show_has_every_experiments_metrics_and_exp_apply_restores_them(tmp_path):
    repo, params, env = _project(tmp_path)
    metrics_file = f"{params['report_root']}/metrics_{params['profile']}.json"
    # What the project's .gitignore says: the metrics file is git's to track; the MLflow store's lock file is not.
    assert subprocess.run(["git", "check-ignore", "-q", metrics_file], cwd=repo).returncode == 1
    assert subprocess.run(["git", "check-ignore", "-q", "mlflow.db.init.lock"], cwd=repo).returncode == 0

    for name, fid in (("small", 1.5), ("large", 2.5)):
        _dvc(repo, env, "exp", "run", "-q", "-n", name, "-S", f"fake_fid={fid}")
    rows = {}
    for baseline in json.loads(_dvc(repo, env, "exp", "show", "--json")):
        for experiment in baseline.get("experiments") or []:
            for rev in experiment["revs"]:
                rows[rev["name"]] = rev["data"]["metrics"][metrics_file]
    assert set(rows) == {"small", "large"}
    assert all("error" not in row for row in rows.values()), rows
    assert {name: row["data"]["fid/vae/normal"] for name, row in rows.items()} == {"small": 1.5, "large": 2.5}

    _dvc(repo, env, "exp", "apply", "small")
    assert json.loads((repo / metrics_file).read_text())["fid/vae/normal"] == 1.5
