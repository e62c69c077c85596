"""Loading the Inception network of FID: the TorchScript ``inception-2015-12-05.pt`` that clean-fid and
StyleGAN2-ADA use (NVIDIA's direct translation of TensorFlow's 2015 Inception graph).

Where the file comes from, in order: ``--inception PATH`` (the file, or a folder holding it; the CLI
also reads ``RECARE_INCEPTION``); else the recare cache, ``$RECARE_CACHE/inception/`` (default
``$XDG_CACHE_HOME/recare`` or ``~/.cache/recare``); else it is downloaded once into that cache from
:data:`URL`, to a temporary file renamed into place only when complete. Offline (``HF_HUB_OFFLINE=1``,
or no route to the host) without the file, one line says where to put it (exit 4).

The model runs in float32 whatever ``--dtype`` says, as clean-fid runs it. Its identity is the file's
SHA-256: a reference computed with other weights is refused by comparing it.
"""

from __future__ import annotations

import shutil
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from recare_cli import console
from recare_cli.errors import ModelUnavailableError
from recare_cli.models.device import resolve_device
from recare_cli.models.hub import offline, reachable

if TYPE_CHECKING:
    import torch

FILENAME = "inception-2015-12-05.pt"
URL = f"https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/{FILENAME}"
ENV = "RECARE_INCEPTION"
NAME = "inception-2015-12-05"
PREPROCESSING = "clean-fid clean: PIL bicubic per-channel float resize to 299"
TIMEOUT = 60.0  # seconds without a byte before a download is given up
HINT = f"download {URL} on a connected machine and pass it with --inception FILE (or {ENV})"


def cached_path() -> Path:
    """Where a downloaded copy is kept."""
    from recare_cli.io.cache import default_cache_dir

    return default_cache_dir() / "inception" / FILENAME


def resolve(path: str | Path | None) -> Path:
    """The weights file: ``path`` (a file, or a folder holding :data:`FILENAME`), else the cached copy,
    else a fresh download into the cache."""
    if path is not None:
        given = Path(path).expanduser()
        found = given / FILENAME if given.is_dir() else given
        if not found.is_file():
            raise ModelUnavailableError(f"--inception {path}: no such file (give {FILENAME} or a folder holding it)")
        return found
    cached = cached_path()
    if not cached.is_file():
        download(cached, URL)
    return cached


def download(target: Path, url: str) -> None:
    """Fetch ``url`` into ``target`` atomically: a cut connection, a short body or a file that is not a
    TorchScript archive (a zip) leaves nothing behind."""
    import urllib.request

    host = urlparse(url).hostname
    if offline() or (host is not None and not reachable(host)):
        raise ModelUnavailableError(f"no Inception weights for fid and no network to fetch them; {HINT}")
    from recare_cli.io.atomic import atomic_path

    console.info(f"downloading the Inception weights (about 100 MB) once from {url} to {target}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response, atomic_path(target) as tmp:
            with open(tmp, "wb") as fh:
                shutil.copyfileobj(response, fh, 1 << 20)
            expected, got = response.headers.get("Content-Length"), tmp.stat().st_size
            if expected is not None and int(expected) != got:
                raise OSError(f"the download stopped after {got} of {expected} bytes")
            if not zipfile.is_zipfile(tmp):
                raise OSError("the download is not a TorchScript archive")
    except (OSError, ValueError) as err:  # urllib's errors are OSErrors
        raise ModelUnavailableError(f"cannot fetch the Inception weights ({err}); {HINT}") from err


@dataclass
class InceptionBundle:
    model: Any  # the TorchScript module; model.layers maps (N, 3, 299, 299) in [-1, 1] to (N, 2048)
    path: Path
    fingerprint: str  # sha256 of the file
    device: torch.device

    def identity(self) -> dict[str, str]:
        """What provenance records about this model."""
        return {"name": NAME, "fingerprint": self.fingerprint, "dtype": "fp32", "preprocessing": PREPROCESSING}


def load_inception(path: str | Path | None, *, device: str = "auto") -> InceptionBundle:
    """Load the Inception TorchScript (see :func:`resolve`) onto ``device``, in float32."""
    import torch

    from recare_cli.io.digest import sha256_file

    file = resolve(path)
    dev = resolve_device(device)
    try:
        with warnings.catch_warnings():  # torch.jit.load is deprecated, but these weights exist only as TorchScript
            warnings.simplefilter("ignore", DeprecationWarning)
            model = torch.jit.load(str(file), map_location=dev).eval()
    except (RuntimeError, ValueError, OSError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ModelUnavailableError(f"cannot load the Inception weights {file}: {first}") from err
    if not hasattr(model, "layers"):
        raise ModelUnavailableError(f"{file} is not the FID Inception network (no 'layers' module; expected "
                                    f"{FILENAME} from {URL})")
    return InceptionBundle(model, file, sha256_file(file), dev)
