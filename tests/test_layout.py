"""The package reads as the pipeline: imports run only downstream, and no two modules import each other."""

import ast
from pathlib import Path

import simslm

PACKAGE = Path(simslm.__file__).parent

# Pipeline order; a module may import its own stage and the stages before it, never a later one.
STAGES = (
    ("simslm", "simslm.config", "simslm.storage", "simslm.machine", "simslm.jobs", "simslm.slurm", "simslm.torchrun"),
    ("simslm.assets",),
    ("simslm.speech",),
    ("simslm.units",),
    ("simslm.sequences",),
    ("simslm.model",),
    ("simslm.train",),
    ("simslm.textlm",),
    ("simslm.eval",),
    ("simslm.scaling",),
    ("simslm.demo",),
    ("simslm.cli", "simslm.__main__"),
)


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def _stage(module: str) -> int:
    for rank, names in enumerate(STAGES):
        if any(module == name or (name != "simslm" and module.startswith(name + ".")) for name in names):
            return rank
    raise AssertionError(f"{module} belongs to no stage: add it to STAGES")


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Every simslm module imported anywhere in the file, lazy imports inside functions included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("simslm"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("simslm"):
            for alias in node.names:  # `from simslm.speech import audio` imports the module simslm.speech.audio
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in modules else node.module)
    return found


def test_every_import_runs_downstream():
    modules = _modules()
    upward = [f"{name} (stage {_stage(name)}) imports {imported} (stage {_stage(imported)})"
              for name, path in modules.items() for imported in _imports(path, modules)
              if _stage(imported) > _stage(name)]
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    modules = _modules()
    graph = {name: {m for m in _imports(path, modules) if m in modules and m != name}
             for name, path in modules.items()}
    # A package's __init__ imports nothing here, so edges into "simslm.x" stand for the package docstring only.
    visiting, done, cycles = set(), set(), []

    def visit(node, trail):
        if node in visiting:
            cycles.append(" -> ".join(trail[trail.index(node):] + [node]))
            return
        if node in done:
            return
        visiting.add(node)
        for successor in sorted(graph[node]):
            visit(successor, trail + [node])
        visiting.discard(node)
        done.add(node)

    for name in sorted(graph):
        visit(name, [])
    assert not cycles, "\n".join(cycles)


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_no_module_takes_another_modules_private_names():
    """A name with a leading underscore is its module's own: one that another module needs is public, under a
    name without it (the splits of sweep.py, extract.py and train.py had left 36 such names)."""
    modules = _modules()
    taken = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        bound = {}  # local names bound to other simslm modules: `from simslm import jobs`, `import simslm.x as y`
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                bound.update({alias.asname: alias.name for alias in node.names
                              if alias.asname and alias.name in modules})
            elif isinstance(node, ast.ImportFrom) and node.module in modules and node.module != name:
                for alias in node.names:
                    submodule = f"{node.module}.{alias.name}"
                    if submodule in modules:
                        bound[alias.asname or alias.name] = submodule
                    elif _private(alias.name):
                        taken.append(f"{name} imports {node.module}.{alias.name}")
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and _private(node.attr)
                    and bound.get(node.value.id, name) != name):
                taken.append(f"{name} uses {bound[node.value.id]}.{node.attr}")
    assert not taken, "\n".join(sorted(set(taken)))


def test_stage_packages_say_what_they_do():
    for package in ("speech", "units", "sequences", "train", "eval", "scaling"):
        docstring = ast.get_docstring(ast.parse((PACKAGE / package / "__init__.py").read_text()))
        assert docstring and docstring.startswith("Stage "), package


def test_tests_mirror_the_modules():
    tests = Path(__file__).parent
    for name, path in _modules().items():
        if path.name in ("__init__.py", "__main__.py"):
            continue
        relative = path.relative_to(PACKAGE)
        mirror = tests.joinpath(*relative.parts[:-1], f"test_{relative.stem}.py")
        assert mirror.exists(), f"{name}: no {mirror.relative_to(tests.parent)}"
