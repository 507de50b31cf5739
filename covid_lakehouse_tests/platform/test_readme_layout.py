"""The README's repository layout names what is really there: every listed path exists, every
top-level package and lib/ module is listed."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _layout() -> str:
    readme = (REPO / "README.md").read_text()
    return re.search(r"## Repository layout\n\n```\n(.*?)```", readme, re.S).group(1)


def _listed_paths() -> list[Path]:
    """Each line's first word, nested under the last top-level entry when indented."""
    paths, parent = [], REPO
    for line in _layout().splitlines():
        word = line.split()[0] if line.strip() else ""
        if not word or "<" in word or not re.match(r"^[\w./-]+$", word) or word.startswith(("`", "@")):
            continue
        if line.startswith(" "):
            for name in word.split(","):
                if name:
                    paths.append(parent / name.rstrip("/"))
        else:
            parent = REPO / word.rstrip("/")
            paths.append(parent)
    return paths


def test_every_listed_path_exists():
    missing = [str(p.relative_to(REPO)) for p in _listed_paths() if not p.exists()]
    assert missing == []


def test_every_top_level_package_and_lib_module_is_listed():
    layout = _layout()
    for package in ("covid_lakehouse", "covid_lakehouse_dev", "covid_lakehouse_tests", "benchmarks"):
        assert re.search(rf"^{package}/", layout, re.M), package
    lib = REPO / "covid_lakehouse" / "lib"
    modules = {p.stem for p in lib.glob("*.py") if p.stem != "__init__"} | {
        p.name for p in lib.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    unlisted = sorted(m for m in modules if not re.search(rf"\b{m}\b", layout))
    assert unlisted == []
