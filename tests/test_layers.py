"""The layers of `likeness/` (ARCHITECTURE.md): a module imports only from its own layer or lower ones, and no
two units (packages or top-level modules of `likeness/`) import each other. Every import statement counts, a lazy
one inside a function too; docstring examples do not (they are strings, not statements)."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "likeness"

# Lowest first. A unit is a package of `likeness/` or one of its top-level modules (its name without `.py`).
# Where ARCHITECTURE.md says "then" within a layer, the later unit stands a step above the earlier one.
LAYERS: list[tuple[str, frozenset[str]]] = [
    ("1 base", frozenset({"__init__", "settings", "inputs", "base", "stop", "files", "heap"})),
    ("2 media, identity", frozenset({"media", "identity"})),
    ("3 dataset", frozenset({"dataset"})),
    ("3 config", frozenset({"config"})),
    ("4 storage, records", frozenset({"storage", "records"})),
    ("5 models", frozenset({"models"})),
    ("6 runpod", frozenset({"runpod"})),
    ("6 training", frozenset({"training"})),
    ("7 render, estimate", frozenset({"render", "estimate"})),
    ("8 run", frozenset({"run"})),
    ("8 cli", frozenset({"cli"})),
    ("9 stages", frozenset({"stages"})),
    # Outside `likeness/`, above it.
    ("above likeness", frozenset({"tasks", "flows", "deployments", "bench", "tests"})),
]
RANK = {unit: rank for rank, (_, units) in enumerate(LAYERS) for unit in units}
OUTSIDE = LAYERS[-1][1]
# The one way up: the CLI is where a person starts a flow or deploys, so its commands import those, lazily.
ALLOWED_UP = frozenset({("cli", "flows"), ("cli", "deployments")})


@dataclass(frozen=True)
class Import:
    path: str  # the importing file, relative to the repository root
    line: int
    source_unit: str
    target: str  # the imported module, dotted
    target_unit: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.source_unit} imports {self.target}"


def units() -> set[str]:
    """The units there are: the packages of `likeness/` and its top-level modules."""
    return {p.parent.name for p in PACKAGE.glob("*/__init__.py")} | {p.stem for p in PACKAGE.glob("*.py")}


def unit_of(module: str) -> str:
    """The unit of a dotted module name ("likeness.media.tiling" -> "media", "flows.render" -> "flows")."""
    parts = module.split(".")
    if parts[0] != "likeness":
        return parts[0]
    return parts[1] if len(parts) > 1 else "__init__"


def imports_of(source: str, module: str, path: str, is_package: bool = False) -> list[Import]:
    """Every import in `source` (the code of `module`) of `likeness` or of what sits above it, relative ones
    resolved."""
    here = module.split(".") if is_package else module.split(".")[:-1]
    found: list[Import] = []
    for node in ast.walk(ast.parse(source, filename=path)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            prefix = ".".join(base + ([node.module] if node.module else []))
            # `from likeness import media` imports the package `likeness.media`; `from likeness import
            # __version__` a name of `likeness/__init__.py`.
            if prefix == "likeness":
                targets = [f"likeness.{a.name}" if a.name in units() else "likeness" for a in node.names]
            else:
                targets = [prefix]
        else:
            continue
        for target in targets:
            if target.split(".")[0] == "likeness" or target.split(".")[0] in OUTSIDE:
                found.append(Import(path, node.lineno, unit_of(module), target, unit_of(target)))
    return found


def violations(imports: list[Import]) -> list[str]:
    """Unknown units, imports up a layer and package cycles, one message each."""
    problems = [
        f"likeness/{unit} is in no layer: add it to LAYERS in tests/test_layers.py and to ARCHITECTURE.md"
        for unit in sorted({u for i in imports for u in (i.source_unit, i.target_unit) if u not in RANK})
    ]
    edges: dict[tuple[str, str], Import] = {}
    for i in imports:
        if i.source_unit == i.target_unit or i.source_unit not in RANK or i.target_unit not in RANK:
            continue
        edges.setdefault((i.source_unit, i.target_unit), i)
        if RANK[i.target_unit] > RANK[i.source_unit] and (i.source_unit, i.target_unit) not in ALLOWED_UP:
            problems.append(
                f"{i}: layer {LAYERS[RANK[i.source_unit]][0]!r} imports from the higher layer "
                f"{LAYERS[RANK[i.target_unit]][0]!r}; move what both need down"
            )
    for (a, b), i in sorted(edges.items()):
        if a < b and (b, a) in edges:
            problems.append(f"package cycle {a} <-> {b}: {i}, and {edges[(b, a)]}")
    return problems


def all_imports() -> list[Import]:
    found: list[Import] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        module = ".".join(parts[:-1] if is_package and len(parts) > 1 else parts)
        found += imports_of(path.read_text(encoding="utf-8"), module, str(path.relative_to(ROOT)), is_package)
    return found


def test_every_unit_of_likeness_is_in_a_layer():
    missing = sorted(units() - set(RANK))
    assert not missing, f"add {missing} to LAYERS in tests/test_layers.py and to ARCHITECTURE.md"


def test_no_import_goes_up_a_layer_and_no_two_packages_import_each_other():
    problems = violations(all_imports())
    assert not problems, "\n".join(problems)


def test_the_checker_catches_a_lazy_upward_import():
    upward = imports_of(
        "def f():\n    from likeness.run.interrupts import check_stop\n",
        "likeness.media.synthetic",
        "likeness/media/synthetic.py",
    )
    (problem,) = violations(upward)
    assert "likeness/media/synthetic.py:2: media imports likeness.run.interrupts" in problem
    assert "'2 media, identity' imports from the higher layer '8 run'" in problem


def test_the_checker_resolves_relative_imports_and_sees_flows_above_likeness():
    relative = imports_of("from ..run import interrupts\n", "likeness.media.synthetic", "likeness/media/synthetic.py")
    assert [i.target for i in relative] == ["likeness.run"] and violations(relative)
    package = imports_of("from .tiling import tile_grid\n", "likeness.media", "likeness/media/__init__.py", True)
    assert [i.target for i in package] == ["likeness.media.tiling"] and not violations(package)
    flows = imports_of("from flows.render import render\n", "likeness.run.x", "likeness/run/x.py")
    assert violations(flows) and not violations(
        imports_of("from flows.render import render\n", "likeness.cli.x", "likeness/cli/x.py")
    )


def test_the_checker_catches_a_package_cycle_and_an_unknown_unit():
    cycle = imports_of("from likeness.estimate import roles\n", "likeness.render.a", "likeness/render/a.py")
    cycle += imports_of("import likeness.render.jobs\n", "likeness.estimate.b", "likeness/estimate/b.py")
    (problem,) = violations(cycle)
    assert problem.startswith("package cycle estimate <-> render: likeness/estimate/b.py:1")

    unknown = imports_of("from likeness.nowhere import x\n", "likeness.media.c", "likeness/media/c.py")
    (problem,) = violations(unknown)
    assert "likeness/nowhere is in no layer" in problem and "ARCHITECTURE.md" in problem


def test_the_checker_ignores_docstring_examples():
    assert imports_of('"""\n    from likeness.run import x\n"""\n', "likeness.media.d", "likeness/media/d.py") == []


@pytest.mark.parametrize("source", ["from likeness.media import tiling\n", "from likeness import __version__\n"])
def test_the_checker_lets_a_downward_import_be(source):
    assert violations(imports_of(source, "likeness.render.e", "likeness/render/e.py")) == []
