"""A torchvision ResNet-50 weights file (``resnet50-11ad3fa6.pth``, torchvision's ``IMAGENET1K_V2``, the
ReCARE reference's object classifier) as a transformers ``ResNetForImageClassification``, without
torchvision.

The file is read with ``torch.load(weights_only=True)``: tensors and plain containers only. A pickle
that needs anything more (classes, functions: code) is refused with one line, exit 4, as is a file
that is not a ResNet-50 state dict in torchvision's key layout (every key of the layout present, no
other key, every shape right).

Both libraries build the same network: ResNet v1.5, bottleneck blocks of depths 3, 4, 6, 3 whose
stride sits on the 3 × 3 convolution (transformers' ``downsample_in_bottleneck=False``), a 1 × 1
projection shortcut on the first block of every stage, a 7 × 7 stem and a 3 × 3 max pool. The keys
map one to one (:func:`key_map`):

=====================================  =============================================================
torchvision                            transformers
=====================================  =============================================================
``conv1``, ``bn1``                     ``resnet.embedder.embedder.{convolution,normalization}``
``layerS.B.convJ``, ``layerS.B.bnJ``   ``resnet.encoder.stages.{S-1}.layers.B.layer.{J-1}.{…same}``
``layerS.0.downsample.0``, ``.1``      ``resnet.encoder.stages.{S-1}.layers.0.shortcut.{…same}``
``fc``                                 ``classifier.1``
=====================================  =============================================================

The class names are torchvision's ``_IMAGENET_CATEGORIES`` (``recare_cli/data/imagenet``); the images
are prepared by :mod:`recare_cli.models.tvpreset`, torchvision's preset for these weights.
"""

from __future__ import annotations

import pickle
import re
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recare_cli.errors import ModelUnavailableError
from recare_cli.models import tvpreset
from recare_cli.models.device import resolve_device, resolve_dtype

if TYPE_CHECKING:
    import torch

    from recare_cli.models.classifier import ClassifierBundle

LAYOUT = "torchvision resnet50"
FILENAME = "resnet50-11ad3fa6.pth"
URL = f"https://download.pytorch.org/models/{FILENAME}"  # torchvision's ResNet50_Weights.IMAGENET1K_V2
SUFFIXES = (".pth", ".pt")
DEPTHS = (3, 4, 6, 3)
WIDTHS = (256, 512, 1024, 2048)  # each stage's output channels (its bottleneck is a quarter of that)
BATCH_NORM = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def is_weights_file(name: str) -> bool:
    """Whether ``--classifier name`` names a torchvision weights file (``.pth`` or ``.pt``)."""
    return Path(name).suffix.lower() in SUFFIXES


@lru_cache(maxsize=1)
def categories() -> tuple[str, ...]:
    """torchvision's 1000 ImageNet class names, in class-index order."""
    text = resources.files("recare_cli.data.imagenet").joinpath("categories.txt").read_text(encoding="utf-8")
    return tuple(text.splitlines())


def key_map(depths: tuple[int, ...] = DEPTHS) -> dict[str, str]:
    """Each torchvision state-dict key → the transformers ``ResNetForImageClassification`` key."""
    out: dict[str, str] = {}

    def conv_norm(conv: str, norm: str, hf: str) -> None:
        out[f"{conv}.weight"] = f"{hf}.convolution.weight"
        out.update({f"{norm}.{name}": f"{hf}.normalization.{name}" for name in BATCH_NORM})

    conv_norm("conv1", "bn1", "resnet.embedder.embedder")
    for stage, depth in enumerate(depths):
        for block in range(depth):
            tv, hf = f"layer{stage + 1}.{block}", f"resnet.encoder.stages.{stage}.layers.{block}"
            for j in range(3):
                conv_norm(f"{tv}.conv{j + 1}", f"{tv}.bn{j + 1}", f"{hf}.layer.{j}")
            if block == 0:
                conv_norm(f"{tv}.downsample.0", f"{tv}.downsample.1", f"{hf}.shortcut")
    out["fc.weight"], out["fc.bias"] = "classifier.1.weight", "classifier.1.bias"
    return out


def _refusal(err: Exception) -> str:
    """What torch's weights-only unpickler refused: the global the file needs, or the operation."""
    text = str(err)
    found = re.search(r"(?i)unsupported (?:global: )?GLOBAL ([\w.]+)", text)
    if found:
        return f"it needs {found.group(1)}"
    found = re.search(r"Unsupported operand \w+", text)
    return found.group(0) if found else "weights-only unpickling failed"


def read_state(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """The file's tensors by name and the file's sha256 (of the bytes read); anything but a plain state
    dict is refused (exit 4)."""
    import io
    import warnings
    import zipfile

    import torch

    from recare_cli.io.digest import sha256_bytes

    try:
        data = path.read_bytes()
    except OSError as err:
        missing = isinstance(err, FileNotFoundError)
        raise ModelUnavailableError(f"--classifier {path}: " + (f"no such file (download {URL})" if missing
                                                                else f"unreadable ({err.strerror})")) from err
    if not (zipfile.is_zipfile(io.BytesIO(data)) or data.startswith(b"\x80")):  # torch's zip format, or a pickle
        raise ModelUnavailableError(f"--classifier {path}: not a torch weights file (neither torch's zip format "
                                    f"nor a pickle)")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on its way to refusing a file
            warnings.simplefilter("ignore")
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ModelUnavailableError(f"--classifier {path}: refused, not a plain tensor file ({_refusal(err)}; "
                                    f"weights are loaded with torch.load(weights_only=True))") from err
    except Exception as err:  # torch.load of bytes that are no checkpoint fails in many ways (KeyError, EOFError…)
        raise ModelUnavailableError(f"--classifier {path}: not a torch weights file ({type(err).__name__}: "
                                    f"{(str(err).strip().splitlines() or [''])[0]})") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelUnavailableError(f"--classifier {path}: not a state dict of tensors (a torchvision weights file "
                                    f"such as {FILENAME} maps parameter names to tensors)")
    return state, sha256_bytes(data)


def to_transformers(state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """``state`` under transformers' names; a missing or unknown key stops with one line (exit 4)."""
    mapping = key_map()
    missing = [key for key in mapping if key not in state]
    unknown = [key for key in state if key not in mapping]
    if missing or unknown:
        parts = [f"{len(missing)} key(s) missing, e.g. '{missing[0]}'" if missing else "",
                 f"{len(unknown)} unknown, e.g. '{unknown[0]}'" if unknown else ""]
        raise ModelUnavailableError(f"--classifier {path}: not a {LAYOUT} state dict "
                                    f"({'; '.join(p for p in parts if p)})")
    return {mapping[key]: tensor for key, tensor in state.items()}


def build(state: dict[str, torch.Tensor], path: Path) -> Any:
    """The transformers ResNet-50 holding ``state`` (torchvision names), in eval mode."""
    import torch
    from transformers import ResNetConfig, ResNetForImageClassification

    labels = categories()
    config = ResNetConfig(num_channels=3, embedding_size=64, hidden_sizes=list(WIDTHS), depths=list(DEPTHS),
                          layer_type="bottleneck", hidden_act="relu", downsample_in_first_stage=False,
                          downsample_in_bottleneck=False, id2label=dict(enumerate(labels)),
                          label2id={label: i for i, label in enumerate(labels)})
    with torch.device("meta"):  # no random initialisation: every tensor comes from the file
        model = ResNetForImageClassification(config)
    mapped = to_transformers(state, path)
    expected = model.state_dict()
    for tv_key, hf_key in key_map().items():
        if tuple(mapped[hf_key].shape) != tuple(expected[hf_key].shape):
            raise ModelUnavailableError(f"--classifier {path}: '{tv_key}' has shape {tuple(mapped[hf_key].shape)}, "
                                        f"a {LAYOUT} has {tuple(expected[hf_key].shape)}")
    model.load_state_dict(mapped, strict=True, assign=True)
    return model.eval().requires_grad_(False)


def load(name: str, *, device: str = "auto", dtype: str = "auto") -> ClassifierBundle:
    """The classifier of the weights file ``name``; ``auto`` dtype is float32 on every device, as the
    reference runs it."""
    import torch

    from recare_cli.models.classifier import ClassifierBundle

    path = Path(name).expanduser()
    dev = resolve_device(device)
    dt = torch.float32 if dtype.strip().lower() == "auto" else resolve_dtype(dtype, dev)
    state, digest = read_state(path)
    model = build(state, path).to(dev, dt)
    return ClassifierBundle(model, name, digest, list(categories()), dev, dt, prepare=tvpreset.batch,
                            about={"layout": LAYOUT, "preprocessing": tvpreset.DESCRIPTION})
