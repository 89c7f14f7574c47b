"""The package's layering, read from the source with `ast` (nothing is imported): lower layers never
import upper ones, and the engine's functions stay short. The kernels live in
hpo_engine/kernels/."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# (layer, layers it must not import)
RULES = [
    ("hpo_engine.cache", ("hpo_engine.runtime", "hpo_engine.models")),
    ("hpo_engine.kernels", ("hpo_engine.runtime", "hpo_engine.models")),
    ("hpo_engine.metrics", ("hpo_engine.runtime", "hpo_engine.models")),
    ("hpo_engine.runtime", ("hpo_engine.server", "hpo_engine.train", "hpo_engine.rl")),
]
MAX_FUNCTION_LINES = 60
SHORT_FUNCTION_PACKAGES = ("hpo_engine/runtime", "hpo_engine/cache")


def modules():
    """(module name, path) of every module under hpo_engine/."""
    for path in sorted((ROOT / "hpo_engine").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path


def imported(module: str, path: Path, modules_only: bool = False) -> set[str]:
    """Absolute names of every module `module` imports (anywhere in the file, lazy imports included);
    `from M import x` gives M and M.x (x may be a module), or only M with `modules_only`."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module
            names.add(prefix)
            if not modules_only:
                names.update(f"{prefix}.{alias.name}" for alias in node.names)
    return names


def inside(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


@pytest.mark.parametrize("layer,forbidden", RULES, ids=[r[0] for r in RULES])
def test_no_upward_imports(layer, forbidden):
    modules_seen, bad = 0, []
    for module, path in modules():
        if not inside(module, layer):
            continue
        modules_seen += 1
        for name in imported(module, path):
            for upper in forbidden:
                if inside(name, upper):
                    bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert modules_seen, f"no module found in {layer}"
    assert not bad, "\n".join(bad)


def test_the_walk_sees_relative_and_lazy_imports():
    """The checker itself: relative imports resolve, and imports inside functions count."""
    names = imported("hpo_engine.kernels", ROOT / "hpo_engine" / "kernels" / "__init__.py")
    assert "hpo_engine.kernels.cpu_linear" in names and "hpo_engine.kernels.triton_paged_attention" in names


def test_every_internal_import_names_a_module_of_the_tree():
    """A moved or renamed module leaves no import behind, in the package, the tests or the benchmarks
    (lazy ones inside functions included)."""
    known = {name for name, _ in modules()} | {"hpo_engine._C"}
    files = list(modules()) + [(f"{p.parent.name}.{p.stem}", p) for folder in ("tests", "bench")
                               for p in sorted((ROOT / folder).glob("*.py"))]
    stale = [f"{path.relative_to(ROOT)} imports {name}" for module, path in files
             for name in imported(module, path, modules_only=True)
             if inside(name, "hpo_engine") and name not in known]
    assert not stale, "\n".join(stale)


def test_functions_in_runtime_and_cache_are_short():
    long = []
    for folder in SHORT_FUNCTION_PACKAGES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1
                    if lines >= MAX_FUNCTION_LINES:
                        long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "\n".join(long)


def test_importing_the_extension_loads_no_engine():
    """`from hpo_engine import _C` (metrics, kernels) does not import the runtime or the models."""
    code = ("import sys; from hpo_engine import _C; import hpo_engine.metrics, hpo_engine.kernels; "
            "print(sorted(m for m in sys.modules if m.startswith(('hpo_engine.runtime', 'hpo_engine.models'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_the_repository_root_holds_no_python_package_but_hpo_engine():
    """`python -m ...` from the root puts it first on sys.path, so a top-level package there shadows
    an installed one of the same name (a top-level `kernels/` broke transformers 5.25, which imports
    Hugging Face's `kernels`)."""
    packages = sorted(p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file())
    assert packages == ["hpo_engine"], packages


def test_transformers_imports_from_the_repository_root():
    """The same shadowing, end to end: transformers' Whisper (which reaches the `kernels` hub
    integration) imports with the root first on sys.path, as under `python -m pytest`."""
    code = "import transformers.models.whisper.modeling_whisper"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
