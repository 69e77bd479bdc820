"""Project-wide rules: the library never imports Ray nor names `ray_jobs`, and every module
imports cleanly."""

import ast
import pkgutil
import subprocess
import sys

import bertvision


def test_library_never_imports_ray():
    modules = [
        m.name
        for m in pkgutil.walk_packages(bertvision.__path__, "bertvision.")
        if not m.name.endswith("__main__")
    ]
    assert "bertvision.extract" in modules and "bertvision.store" in modules
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
    for path in bertvision.__path__:
        from pathlib import Path

        for file in Path(path).rglob("*.py"):
            text = file.read_text()
            assert "import ray" not in text and "from ray" not in text, file


def _imported_names(file) -> set[str]:
    """Every module a file imports: import statements, and importlib.import_module / __import__
    calls with a constant name (anywhere in the file, at any depth)."""
    names = set()
    for node in ast.walk(ast.parse(file.read_text(), str(file))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                names.add(node.args[0].value)
    return names


def test_library_never_names_ray_jobs_or_ray():
    """By import analysis: the library reaches the Ray entrypoints only through the
    `bertvision.runners` entry points that pyproject.toml registers."""
    from pathlib import Path

    files = sorted(Path(bertvision.__path__[0]).rglob("*.py"))
    assert len(files) > 20
    for file in files:
        bad = {n for n in _imported_names(file) if n.split(".")[0] in ("ray", "ray_jobs")}
        assert not bad, f"{file} imports {sorted(bad)}"
    # the check sees dynamic imports too
    probe = Path(__file__).with_name("_layout_probe.py")
    try:
        probe.write_text("import importlib\ndef f():\n    return importlib.import_module('ray_jobs.embed')\n")
        assert _imported_names(probe) == {"importlib", "ray_jobs.embed"}
    finally:
        probe.unlink()


def test_ray_runners_are_registered():
    from importlib.metadata import entry_points

    runners = {ep.name: ep.value for ep in entry_points(group="bertvision.runners")}
    assert runners.get("embed") == "ray_jobs.embed:run", runners
