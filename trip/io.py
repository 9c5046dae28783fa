"""File I/O shared by the library and the pipeline.

Atomic writes: a reader (or a killed process) never sees a half-written file.
Reads of YAML mappings and of ``metrics.jsonl``: one place, with errors that name the file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

import yaml

from trip.config import ConfigError, is_number


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Write through ``write`` to a temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide the file from other readers
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


class MissingFileError(ConfigError, FileNotFoundError):
    """A file that is not there. Both kinds: the CLIs catch ConfigError for a config file the user names,
    and callers of run-directory readers (``load_run``) catch FileNotFoundError."""


def read_yaml_mapping(path: str | Path, what: str = "config file") -> dict:
    """The top-level mapping of a YAML file (an empty file gives ``{}``); errors name ``what`` and the path."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{what} {path} does not exist")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{what} {path} must hold a mapping, got {type(raw).__name__}")
    return raw


def read_metrics(path: str | Path, missing_ok: bool = False) -> list[dict]:
    """The records of a ``metrics.jsonl``, one per line, each with a numeric ``step``.

    A missing file is ``[]`` with ``missing_ok`` (a run that has not logged yet), else FileNotFoundError;
    a line that is not such a record is a ValueError naming the file and the line.
    """
    path = Path(path)
    if not path.is_file():
        if missing_ok:
            return []
        raise FileNotFoundError(f"metrics file {path} does not exist")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"metrics file {path}, line {number} is not JSON: {err}") from None
        if not isinstance(record, dict) or not is_number(record.get("step")):
            raise ValueError(f"metrics file {path}, line {number} has no numeric 'step': {line[:80]!r}")
        records.append(record)
    return records
