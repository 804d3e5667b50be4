"""The package's shape: every first-party import at the top of its module, where the import
layers (``lint-imports``, contracts in pyproject.toml) can see it."""

import ast
from pathlib import Path

import resnetbk

PACKAGE = Path(resnetbk.__file__).parent
#: The one exception: the Triton kernels' module imports triton, an optional dependency, at its top.
OPTIONAL = {"resnetbk/core/torch_backend.py": "from . import triton_kernels"}


def _function_level_first_party_imports(path: Path, root: Path = PACKAGE.parent) -> list:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for inner in ast.walk(node):
            if isinstance(inner, ast.ImportFrom) and (inner.level > 0 or (inner.module or "").startswith("resnetbk")):
                found.append(f"{path.relative_to(root)}:{inner.lineno}")
            elif isinstance(inner, ast.Import) and any(a.name.startswith("resnetbk") for a in inner.names):
                found.append(f"{path.relative_to(root)}:{inner.lineno}")
    return found


def test_no_first_party_import_inside_a_function():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = path.read_text().splitlines()
        for hit in _function_level_first_party_imports(path):
            where, line = hit.rsplit(":", 1)
            if OPTIONAL.get(where) != lines[int(line) - 1].split("#")[0].strip():  # only that one import
                found.append(hit)
    assert found == [], f"first-party imports inside functions (move them to the top of the module): {found}"


def test_the_check_sees_an_import_inside_a_function(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import torch\n\ndef f():\n    import numpy\n    from .core import bk_core\n"
                      "    import resnetbk.data\n    return bk_core\n")
    assert _function_level_first_party_imports(sample, tmp_path) == ["sample.py:5", "sample.py:6"]
