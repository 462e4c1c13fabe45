"""Packaging metadata in the form current setuptools reads without a deprecation block on every install."""
from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

PYPROJECT = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())


def test_license_is_an_spdx_string_and_the_backend_can_read_it():
    lic = PYPROJECT["project"]["license"]
    assert isinstance(lic, str) and lic == "Apache-2.0"  # a {text = ...} table is deprecated since setuptools 77
    (st,) = [Requirement(r) for r in PYPROJECT["build-system"]["requires"] if Requirement(r).name == "setuptools"]
    assert st.specifier.contains(Version("77.0.0")) and not st.specifier.contains(Version("76.9"))
    assert not any(c.startswith("License ::") for c in PYPROJECT["project"].get("classifiers", []))  # PEP 639
