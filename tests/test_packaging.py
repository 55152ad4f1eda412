"""The package list in pyproject.toml names every package of the tree (a wheel built from it
would otherwise silently leave modules out)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_is_listed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {".".join(init.parent.relative_to(ROOT).parts)
             for init in (ROOT / "aiovirt").rglob("__init__.py")
             if "__pycache__" not in init.parts}
    assert found - listed == set(), "not in pyproject.toml's packages"
    assert listed - found == {"aiovirt._profiles"}       # profiles/, mapped by package-dir
    assert config["package-dir"]["aiovirt._profiles"] == "profiles"
