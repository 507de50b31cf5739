"""The product never depends on its stand-ins: no module of covid_lakehouse imports covid_lakehouse_dev,
except the CLI's lazy imports inside functions, and those say in one line what is missing."""

import ast
import sys
from pathlib import Path

import pytest

from covid_lakehouse import cli

PRODUCT = Path(__file__).resolve().parents[2] / "covid_lakehouse"
LAZY_IMPORTERS = {"cli.py", "runtime.py"}  # the CLI, importing the stand-ins only when a command needs them


def _imports_of_dev(tree: ast.AST) -> list[ast.stmt]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            continue
        if any(name == "covid_lakehouse_dev" or name.startswith("covid_lakehouse_dev.") for name in names):
            found.append(node)
    return found


def test_no_product_module_imports_the_dev_package():
    offenders = []
    for path in sorted(PRODUCT.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        found = _imports_of_dev(tree)
        if not found:
            continue
        relative = path.relative_to(PRODUCT).as_posix()
        in_functions = {id(node) for fn in ast.walk(tree) if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
                        for node in _imports_of_dev(fn)}
        if relative not in LAZY_IMPORTERS:
            offenders += [f"{relative}:{node.lineno}" for node in found]
        else:
            offenders += [f"{relative}:{node.lineno} (module level)" for node in found if id(node) not in in_functions]
    assert offenders == []


@pytest.mark.parametrize("argv", [["demo"], ["up"], ["mock-apis"], ["seed", "omop", "--tenant", "demo",
                                                                      "--providers", "10"]])
def test_commands_needing_the_stand_ins_say_so_in_one_line_when_they_are_missing(argv, monkeypatch, tmp_path, capsys):
    # As in the production image: covid_lakehouse_dev cannot be imported.
    for name in [n for n in sys.modules if n == "covid_lakehouse_dev" or n.startswith("covid_lakehouse_dev.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "covid_lakehouse_dev", None)
    monkeypatch.setenv("COVID_LAKEHOUSE_HOME", str(tmp_path / "home"))

    assert cli.main(argv) == 2

    err = capsys.readouterr().err
    assert err == (f"covid-lakehouse {argv[0]} needs the development package covid_lakehouse_dev: install the "
                   "project from a checkout with `make venv`\n")
    assert not (tmp_path / "home").exists(), "nothing is started before the check"
