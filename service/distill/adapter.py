"""The folder ``smallfirst distill`` writes, as the service reads it: the adapter GGUF and its report.

Only an adapter that its distill run accepted, trained for the very model file being served, is
loaded; anything else is a configuration error at start.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from smallfirst.errors import ConfigError

ADAPTER_FILE = "adapter.gguf"
REPORT_FILE = "report.json"
REPORT_VERSION = 1


def base_model_identity(model_path: Path) -> dict[str, Any]:
    """What an adapter records of the model it was trained on, and the service compares at start."""
    return {"file": model_path.name, "bytes": model_path.stat().st_size}


@dataclass(frozen=True)
class Adapter:
    """An accepted adapter: its GGUF file and what its report says of it."""

    folder: Path
    report: dict[str, Any]

    @property
    def path(self) -> Path:
        return self.folder / ADAPTER_FILE

    @property
    def name(self) -> str:
        return self.folder.name

    def describe(self) -> dict[str, Any]:
        """For ``ready`` and ``/api/stats``: which adapter, when it was made, from how much data."""
        data = self.report.get("data", {})
        return {"name": self.name, "created": self.report.get("created"), "train_examples": data.get("train", 0),
                "bytes": self.path.stat().st_size}


def load_adapter(folder: Path, model_path: Path) -> Adapter:
    """The adapter in ``folder`` for the model at ``model_path``, checked; a clear error otherwise."""
    if not folder.is_dir():
        raise ConfigError(f"SMALLFIRST_ADAPTER_PATH: {folder} is not a folder written by `smallfirst distill`")
    try:
        report = orjson.loads((folder / REPORT_FILE).read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ConfigError(f"SMALLFIRST_ADAPTER_PATH: cannot read {folder / REPORT_FILE}: {exc}") from None
    if not isinstance(report, dict) or report.get("version") != REPORT_VERSION:
        raise ConfigError(f"SMALLFIRST_ADAPTER_PATH: {folder / REPORT_FILE} is not a distill report of version {REPORT_VERSION}")
    if not report.get("accepted"):
        raise ConfigError(f"SMALLFIRST_ADAPTER_PATH: the adapter in {folder} was refused by its evaluation "
                          f"({report.get('verdict', 'no verdict')}); it is not served")
    if not (folder / ADAPTER_FILE).is_file():
        raise ConfigError(f"SMALLFIRST_ADAPTER_PATH: {folder} holds no {ADAPTER_FILE}")
    trained_on, serving = report.get("base_model"), base_model_identity(model_path)
    if trained_on != serving:
        raise ConfigError(f"SMALLFIRST_ADAPTER_PATH: the adapter in {folder} was trained for {trained_on}, "
                          f"but the service runs {serving}")
    return Adapter(folder, report)
