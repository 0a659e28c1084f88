"""What a built wheel ships: the license, the typing marker, the metadata users look for.

Built from the working tree with the same backend pip uses (`pip wheel`, no build isolation:
the build requirements are the test environment's), then read as the zip file it is.
"""

from __future__ import annotations

import email.parser
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
         "--wheel-dir", str(out), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    (path,) = out.glob("mgeo_stream-*.whl")
    with zipfile.ZipFile(path) as zf:
        yield zf


def _metadata(wheel: zipfile.ZipFile):
    (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    return email.parser.Parser().parsestr(wheel.read(name).decode("utf-8"))


@pytest.mark.slow
def test_wheel_marks_the_package_typed(wheel):
    """PEP 561: a py.typed beside mgeo/__init__.py tells type checkers to read the package's
    own annotations (mgeo.wire.Result, publish_pairs, ResultReader); it covers every
    subpackage below it."""
    names = set(wheel.namelist())
    assert "mgeo/__init__.py" in names and "mgeo/py.typed" in names
    assert "mgeo/producer/__init__.py" in names


@pytest.mark.slow
def test_wheel_ships_the_license_it_declares(wheel):
    meta = _metadata(wheel)
    assert meta["License-Expression"] == "Apache-2.0"
    (entry,) = meta.get_all("License-File")
    assert entry == "LICENSE"
    shipped = [n for n in wheel.namelist() if n.endswith(".dist-info/licenses/LICENSE")]
    assert len(shipped) == 1
    text = wheel.read(shipped[0]).decode("utf-8")
    assert text == (ROOT / "LICENSE").read_text(encoding="utf-8")


def test_license_file_is_the_full_apache_text():
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text
    for section in range(1, 10):
        assert f"\n   {section}. " in text, f"section {section} of the license is missing"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]


def test_changelog_keeps_an_unreleased_section_and_the_declared_version():
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert "keepachangelog.com" in text
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert headings[0] == "## [Unreleased]"
    version = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))[
        "project"]["version"]
    assert any(h.startswith(f"## [{version}]") for h in headings), version
