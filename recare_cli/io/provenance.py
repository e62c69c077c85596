"""Provenance recorded in every output: what made it, with which models and parameters.

No timestamps or host names: the same command on the same machine gives the same bytes.
"""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Any

from recare_cli import __version__

_LIBRARIES = ("torch", "diffusers", "transformers", "scikit-learn", "numpy")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def provenance(command: str, params: dict[str, Any], **models: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "recare": __version__,
        "command": command,
        "params": {k: (str(v) if hasattr(v, "__fspath__") else v) for k, v in params.items()},
        "versions": library_versions(),
    }
    if models:
        record["models"] = models
    return record
