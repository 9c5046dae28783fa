"""Fixtures of the pipeline tests: an MLflow store per test, without paying for its migrations each time."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline.tracking import SerializedLogger


@pytest.fixture(scope="session")
def migrated_db(tmp_path_factory) -> Path:
    """An empty, fully migrated MLflow database; copying it skips the ~2 s of migrations."""
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    SerializedLogger(f"sqlite:///{path}")
    return path


@pytest.fixture
def project(tmp_path, migrated_db, monkeypatch) -> Path:
    """A project root holding its own copy of the empty database."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    shutil.copy(migrated_db, tmp_path / "mlflow.db")
    return tmp_path
