"""The test suite's own conventions, checked on its source (AST, no imports executed):

- a test package's shared helpers live in ONE module, ``support.py`` (plain functions and classes,
  imported by the tests); nothing else but ``test_*.py`` and ``conftest.py`` sits next to them;
- ``conftest.py`` holds only fixtures (and pytest hooks);
- a test imports helpers only from a ``support`` module, never from another test module or a conftest;
- a test never imports a private (``_name``) name of a product module: it tests the public API, or the
  name is made public where tests legitimately need it.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
PRODUCT_PACKAGES = ("covid_lakehouse", "covid_lakehouse_dev")
TEST_PACKAGE = TESTS.name


def _modules() -> list[Path]:
    return sorted(p for p in TESTS.rglob("*.py") if "__pycache__" not in p.parts)


def _rel(path: Path) -> str:
    return str(path.relative_to(TESTS.parent))


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _imports(tree: ast.Module) -> list[tuple[int, str, str | None]]:
    """(line, module, imported name or None for a plain `import module`) of every import, nested too."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = ("." * node.level) + (node.module or "")
            found += [(node.lineno, module, alias.name) for alias in node.names]
    return found


def _is_fixture(node: ast.FunctionDef) -> bool:
    for decorator in node.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if ast.unparse(target) in ("pytest.fixture", "fixture"):
            return True
    return False


def helper_module_problems() -> list[str]:
    return [f"{_rel(p)}: shared test helpers belong in support.py (one per test package)"
            for p in _modules()
            if p.name not in ("support.py", "conftest.py", "__init__.py") and not p.name.startswith("test_")]


def conftest_problems() -> list[str]:
    problems = []
    for path in _modules():
        if path.name != "conftest.py":
            continue
        body = ast.parse(path.read_text()).body
        for node in body[1:] if body and isinstance(body[0], ast.Expr) else body:  # after the docstring
            if isinstance(node, ast.Import | ast.ImportFrom):
                continue
            if isinstance(node, ast.FunctionDef) and (_is_fixture(node) or node.name.startswith("pytest_")):
                continue
            what = getattr(node, "name", None) or ast.unparse(node).splitlines()[0][:60]
            problems.append(f"{_rel(path)}:{node.lineno}: conftest.py holds only fixtures; move `{what}` "
                            "to the package's support.py")
    return problems


def import_problems() -> list[str]:
    problems = []
    for path in _modules():
        for line, module, name in _imports(ast.parse(path.read_text())):
            where = f"{_rel(path)}:{line}"
            dotted = module if name is None else f"{module}.{name}"
            if module.startswith("."):
                problems.append(f"{where}: relative import `{dotted}`; import support modules by full name")
            elif module.split(".")[0] == TEST_PACKAGE:
                # `from covid_lakehouse_tests.x.support import f` or `from covid_lakehouse_tests.x import support`
                parts = module.split(".")
                if parts[-1] != "support" and not (name == "support" and len(parts) >= 2):
                    problems.append(f"{where}: imports `{dotted}`; tests import helpers only from a support module")
            elif module.split(".")[0] in PRODUCT_PACKAGES:
                private = [p for p in dotted.split(".") if _is_private(p)]
                if private:
                    problems.append(f"{where}: imports the private name `{dotted}` of a product module; "
                                    "test the public API or make the name public")
    return problems


def test_shared_helpers_live_in_one_support_module_per_package():
    assert helper_module_problems() == []


def test_conftest_files_hold_only_fixtures():
    assert conftest_problems() == []


def test_tests_import_helpers_from_support_modules_and_no_private_product_names():
    assert import_problems() == []


def test_the_checks_see_what_they_must(tmp_path, monkeypatch):
    """The scanners find each kind of violation (so an empty list above means something)."""
    package = tmp_path / TEST_PACKAGE / "pkg"
    package.mkdir(parents=True)
    (package / "helpers.py").write_text("X = 1\n")
    (package / "support.py").write_text("def f():\n    return 1\n")
    (package / "conftest.py").write_text('"""doc"""\nimport pytest\n\n\n@pytest.fixture\ndef ok():\n    return 1\n\n\n'
                                         "def helper():\n    return 2\n\n\nclass Helpers:\n    pass\n")
    (package / "test_a.py").write_text(
        f"from {TEST_PACKAGE}.pkg.test_b import thing\n"
        f"from {TEST_PACKAGE}.pkg.support import f\n"
        f"from {TEST_PACKAGE}.pkg import support\n"
        "from covid_lakehouse.lib.embedded import (\n    EmbeddedStack,\n    _hidden,\n)\n"
        "import covid_lakehouse._private.mod\n"
        "from .support import f as g\n")
    monkeypatch.setitem(globals(), "TESTS", tmp_path / TEST_PACKAGE)

    assert [p.split(":")[0] for p in helper_module_problems()] == [f"{TEST_PACKAGE}/pkg/helpers.py"]
    assert [p.split("`")[1] for p in conftest_problems()] == ["helper", "Helpers"]
    found = import_problems()
    assert [int(p.split(":")[1]) for p in found] == [1, 4, 8, 9], found
