"""Finding and reading images: folders, path lists, every common mode, EXIF orientation.

Reading rules (shared by ``mine``, ``invert`` and ``score``):

* extensions ``.jpg .jpeg .png .webp .bmp .tif .tiff`` (case-insensitive), sorted paths;
* EXIF orientation applied; greyscale, palette, 16-bit and float images converted to 8-bit RGB
  (16-bit scaled, not clipped); transparency composited onto white;
* a file that cannot be decoded completely (not an image, truncated) is *unreadable*: the
  caller skips it with a warning or stops with ``--strict``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from recare_cli.errors import BadInputError
from recare_cli.io.streams import STDIO, display_name, read_text_lines

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})


def list_images(folder: Path, *, recursive: bool = False) -> list[Path]:
    if not folder.exists():
        raise BadInputError("no such folder", source=str(folder))
    if not folder.is_dir():
        raise BadInputError("not a folder", source=str(folder))
    pattern = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in pattern if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def read_path_list(src: str | os.PathLike[str]) -> list[Path]:
    """Image paths, one per line (blank lines and ``#`` comments ignored); relative to the list file."""
    base = Path.cwd() if str(src) == STDIO else Path(src).parent
    paths = []
    for _, line in read_text_lines(src):
        entry = line.strip()
        if entry and not entry.startswith("#"):
            p = Path(entry)
            paths.append(p if p.is_absolute() else base / p)
    return paths


def resolve_image_inputs(source: str, *, recursive: bool, as_list: bool) -> list[Path]:
    """``source`` is a folder, a list file (with ``as_list``) or ``-`` (a list on stdin)."""
    if source == STDIO or as_list:
        paths = read_path_list(source)
        if not paths:
            raise BadInputError("the image list is empty", source=display_name(source))
        return paths
    if Path(source).is_file():
        raise BadInputError("not a folder (for a file listing image paths, add --list)", source=source)
    paths = list_images(Path(source), recursive=recursive)
    if not paths:
        hint = "" if recursive else " (use --recursive for sub-folders)"
        raise BadInputError(f"no image files found{hint}", source=source)
    return paths


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image to 8-bit RGB: EXIF orientation, 16-bit scaling, alpha onto white."""
    image = ImageOps.exif_transpose(image) or image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16") or (image.mode == "I" and arr.max(initial=0) > 255):
            arr = arr / 257.0
        elif image.mode == "F" and arr.max(initial=0) <= 1.0:
            arr = arr * 255.0
        image = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def load_image(path: Path) -> Image.Image:
    """Decode fully (so truncation is caught here) and convert; raises ``OSError`` if unreadable."""
    try:
        with Image.open(path) as im:
            im.load()
            return to_rgb(im)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise OSError(str(err) or type(err).__name__) from err


def iter_images(paths: Iterable[Path], *, strict: bool,
                skipped: list[tuple[Path, str]]) -> Iterator[tuple[Path, Image.Image]]:
    """Yield ``(path, rgb_image)``; unreadable files are appended to ``skipped`` (or raise if strict)."""
    for path in paths:
        try:
            image = load_image(path)
        except OSError as err:
            if strict:
                raise BadInputError(f"unreadable image ({err})", source=str(path)) from err
            skipped.append((path, str(err)))
            continue
        yield path, image
