"""Project-wide rules: the library never imports Ray, and every module imports cleanly."""

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
