"""Shared fixtures: offline environment, tiny models built once per session from configs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One thread per pytest-xdist worker (and per process it starts): the workers already fill the cores, and
    # contending torch/OpenMP threads on tiny tensors are far slower than one each.
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
UNSET = ("RECARE_CLIP", "RECARE_MODEL", "RECARE_DEBUG")


@pytest.fixture(scope="session", autouse=True)
def _offline_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The same environment for the session- and module-scoped fixtures, which are set up before any
    function-scoped one: without it a module fixture that mines wrote into the user's real cache."""
    saved = {key: os.environ.get(key) for key in (*OFFLINE, "RECARE_CACHE", *UNSET)}
    os.environ.update(OFFLINE, RECARE_CACHE=str(tmp_path_factory.getbasetemp() / "recare-cache"))
    for key in UNSET:
        os.environ.pop(key, None)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No test may touch a model hub or the user's cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("RECARE_CACHE", str(tmp_path_factory.getbasetemp() / "recare-cache"))
    monkeypatch.delenv("RECARE_CLIP", raising=False)
    monkeypatch.delenv("RECARE_MODEL", raising=False)
    monkeypatch.delenv("RECARE_DEBUG", raising=False)


@pytest.fixture(autouse=True)
def _console_not_quiet() -> None:
    """Every test starts with messages on: an in-process command run with --quiet leaves the console quiet, and
    a later test in the same worker that checks a warning would see nothing."""
    from recare_cli import console

    console.set_quiet(False)


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Tiny tensors on two shared cores: contending torch threads are far slower than one."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from recare_cli.models.quiet import quiet_libraries
    from recare_cli.models.tiny import build_tiny_clip

    quiet_libraries()
    return build_tiny_clip(tmp_path_factory.mktemp("models") / "tiny-clip", seed=0)


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from recare_cli.models.quiet import quiet_libraries
    from recare_cli.models.tiny import build_tiny_sd

    quiet_libraries()
    return build_tiny_sd(tmp_path_factory.mktemp("models") / "tiny-sd", seed=0)


@pytest.fixture(scope="session")
def target_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Twelve small procedural PNGs (deterministic)."""
    from recare_cli.models.tiny import draw_images

    folder = tmp_path_factory.mktemp("images")
    draw_images(folder, 12, seed=0, size=40)
    return folder


@pytest.fixture(scope="session")
def tiny_sd2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SD 2.x-style v-prediction model (``models.tiny.build_tiny_sd2``)."""
    from recare_cli.models.quiet import quiet_libraries
    from recare_cli.models.tiny import build_tiny_sd2

    quiet_libraries()
    return build_tiny_sd2(tmp_path_factory.mktemp("models") / "tiny-sd2", seed=0)


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SDXL model (``models.tiny.build_tiny_sdxl``)."""
    from recare_cli.models.quiet import quiet_libraries
    from recare_cli.models.tiny import build_tiny_sdxl

    quiet_libraries()
    return build_tiny_sdxl(tmp_path_factory.mktemp("models") / "tiny-sdxl", seed=0)


@pytest.fixture(scope="session")
def care_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-word nudity CARE-set in the reference's JSON (person, man)."""
    import json

    path = tmp_path_factory.mktemp("care") / "care.json"
    path.write_text(json.dumps({"nudity_care_word": ["A person", "A man"],
                                "nudity_care_word_photo": ["A photo of person", "A photo of man"]}))
    return path


# The longest files, started first: under pytest-xdist (a file per worker) a long file picked up last leaves the other
# worker idle at the end of the run.
SLOW_FIRST = ("test_recipe.py", "test_demo.py", "test_sample.py", "test_pipeline_shell.py", "test_demo_paper.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FIRST)))
