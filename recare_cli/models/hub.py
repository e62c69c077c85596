"""Resolve a model reference (local folder or hub id) with one clear line when it cannot be had."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlparse

from recare_cli.errors import ModelUnavailableError

T = TypeVar("T")


def _looks_like_path(name: str) -> bool:
    """Hub ids are ``name`` or ``owner/name``; anything else is meant as a folder."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or name.endswith("/") or "\\" in name


def offline() -> bool:
    """Whether the user said there is no network (``HF_HUB_OFFLINE``, honoured for every download)."""
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def reachable(host: str, timeout: float = 3.0) -> bool:
    """Fast DNS check so an offline machine fails in milliseconds, not after 30 s of retries."""
    if offline():
        return False
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False
    finally:
        socket.setdefaulttimeout(previous)


def _hub_reachable() -> bool:
    try:
        from huggingface_hub import constants

        host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    except Exception:  # pragma: no cover - huggingface_hub always present with transformers
        host = "huggingface.co"
    return reachable(host)


def load_pretrained(loader: Callable[..., T], name: str, *, what: str, hint: str, **kwargs: object) -> T:
    """Call ``loader(name_or_folder, **kwargs)`` (a ``from_pretrained``).

    Order: an existing local folder; else the local hub cache (works offline); else the hub.
    ``what`` names the model in messages (``"CLIP model"``), ``hint`` says how to point at a folder.
    """
    local = Path(name).expanduser()
    if local.exists():
        if not local.is_dir():
            raise ModelUnavailableError(f"{what} '{name}' is a file; expected a model folder ({hint})")
        try:
            return loader(str(local), **kwargs)
        except (OSError, ValueError, KeyError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ModelUnavailableError(f"cannot load {what} from folder '{name}': {first}") from err
    if _looks_like_path(name):
        raise ModelUnavailableError(f"{what} folder '{name}' does not exist ({hint})")
    try:
        return loader(name, local_files_only=True, **kwargs)
    except (OSError, ValueError):
        pass
    unavailable = ModelUnavailableError(
        f"cannot fetch {what} '{name}' from the model hub (offline or unreachable); "
        f"download it on a connected machine and {hint}")
    if not _hub_reachable():
        raise unavailable
    try:
        return loader(name, **kwargs)
    except OSError as err:
        raise unavailable from err
