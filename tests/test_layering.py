"""The house's layers, read from the imports of every module (top-level and inside functions).

cli → stages → core / io / models, with the base modules (errors, console, parallel, data) beneath
everything. Nothing imports upward. The toy world and the demo are one wing that uses the method;
no module of the method imports them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "recare_cli"
BASE = {"errors", "console", "parallel", "dtypes", "data", "__init__"}
# What each room may import besides itself and the base.
ALLOWED = {
    "core": set(),
    "io": set(),
    "models": {"io"},
    "stages": {"core", "io", "models"},
    "toyworld": {"core", "io", "models"},
    "demo": {"core", "io", "models", "stages", "toyworld"},
    "cli": {"core", "io", "models", "stages", "toyworld", "demo"},
    "parallel": set(),
    "dtypes": set(),
    "console": set(),
    "errors": set(),
    "data": set(),
    "__main__": {"cli"},
}
WING = {"toyworld", "demo"}
WING_ENTRY_POINTS = {"cli/demo.py", "cli/toyworld.py", "cli/app.py", "cli/docs.py"}


def room(module: str) -> str:
    """``recare_cli.stages.erase`` → ``stages``; ``recare_cli`` → ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "recare_cli":  # from recare_cli import console, __version__
                found.extend((node.lineno, f"recare_cli.{a.name}") for a in node.names)
            elif node.module.startswith("recare_cli."):
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, a.name) for a in node.names if a.name.startswith("recare_cli."))
    return found


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def room_of_file(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_upward(path: Path) -> None:
    here = room_of_file(path)
    allowed = ALLOWED.get(here, set()) | BASE | {here}
    wrong = [f"line {line}: {module}" for line, module in imports(path)
             if room(module) not in allowed and module != "recare_cli.__version__"]
    assert not wrong, f"{path.relative_to(PACKAGE)} ({here}) imports beyond its layer: {wrong}"


def test_the_method_does_not_import_the_wing() -> None:
    offenders = []
    for path in modules():
        rel = str(path.relative_to(PACKAGE))
        if room_of_file(path) in WING or rel in WING_ENTRY_POINTS:
            continue
        offenders += [f"{rel}:{line} {m}" for line, m in imports(path) if room(m) in WING]
    assert not offenders, offenders


def test_the_rules_see_imports_inside_functions(tmp_path: Path) -> None:
    """The checker itself: a lazy import inside a function counts as much as a top-level one."""
    src = tmp_path / "x.py"
    src.write_text("def f():\n    from recare_cli.stages.sample import run_sample\n    import recare_cli.cli.app\n")
    assert imports(src) == [(2, "recare_cli.stages.sample"), (3, "recare_cli.cli.app")]
    assert room("recare_cli.stages.sample") == "stages"
