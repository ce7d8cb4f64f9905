"""One Beam version everywhere: the repo-root BEAM_VERSION file is read by every place that
names a Beam release, and the jars on disk are of that release only (docs/runners.md)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import apache_beam
import pytest

ROOT = Path(__file__).resolve().parent.parent
VERSION = (ROOT / "BEAM_VERSION").read_text().strip()
BEAM_JAR = re.compile(r"^beam-.*?-(\d+\.\d+\.\d+)\.jar$")


def test_the_python_sdk_and_the_pins_are_the_file_s_version():
    assert re.fullmatch(r"\d+\.\d+\.\d+", VERSION)
    assert apache_beam.__version__ == VERSION
    pin = rf"^apache-beam(\[[a-z,]+\])?=={re.escape(VERSION)}\b"
    assert re.search(pin, (ROOT / "requirements.txt").read_text(), re.M)
    assert re.search(pin, (ROOT / "requirements-dev.txt").read_text(), re.M)
    major, minor, _ = VERSION.split(".")
    requires = subprocess.run(
        [str(ROOT / ".venv/bin/python"), "-c",
         "import setuptools, runpy, sys; setuptools.setup = lambda **kw: print(kw['install_requires'][0]);"
         f"sys.argv=['setup.py']; runpy.run_path({str(ROOT / 'setup.py')!r})"],
        cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    assert re.fullmatch(rf"apache-beam(\[[a-z,]+\])?>={re.escape(VERSION)},<{major}\.{int(minor) + 1}",
                        requires), requires
    assert "include BEAM_VERSION" in (ROOT / "MANIFEST.in").read_text(), "sdists rebuild setup.py"


def test_both_dockerfiles_default_to_the_file_s_version_and_copy_it():
    for path in (ROOT / "Dockerfile", ROOT / "docker/flex-template/Dockerfile"):
        text = path.read_text()
        assert re.search(rf"^ARG BEAM_VERSION={re.escape(VERSION)}$", text, re.M), path
        assert re.search(r"^COPY .*\bBEAM_VERSION\b", text, re.M), path
        assert "--build-arg BEAM_VERSION=$(cat BEAM_VERSION)" in text, path
        assert not re.search(r"\b2\.\d\d\.\d\b", text.replace(VERSION, "")), f"another Beam version in {path}"


def test_the_scripts_take_the_version_from_the_file():
    kafka = (ROOT / "scripts/kafka.sh").read_text()
    flink = (ROOT / "scripts/flink.sh").read_text()
    assert '"$ROOT/BEAM_VERSION"' in kafka and '"-Dbeam.version=$(beam_version)"' in kafka
    assert 'version="v$(beam_version)"' in kafka, "Prism at the same release"
    assert 'BEAM_JAVA_VERSION="$(tr -d \'[:space:]\' <"$ROOT/BEAM_VERSION")"' in flink
    assert "BEAM_JOBSERVICE_VERSION=\"$BEAM_JAVA_VERSION\"" in flink
    for pom in ("scripts/kafka/expansion-service-pom.xml", "scripts/flink/job-server/pom.xml"):
        assert f">{VERSION}<" in (ROOT / pom).read_text(), f"{pom}: default = BEAM_VERSION"


@pytest.mark.kafka
def test_the_cache_holds_one_beam_version():
    """Every Beam jar an install left in .cache (expansion service, job server, Beam's jar
    cache when pointed there) carries BEAM_VERSION in its name; no jar stands in for another."""
    found = {}
    for jar in (ROOT / ".cache").rglob("beam-*.jar"):
        if "m2" in jar.relative_to(ROOT / ".cache").parts:  # a Maven repository holds history
            continue
        m = BEAM_JAR.match(jar.name)
        if m and not jar.name.startswith("beam-vendor-"):
            found[str(jar.relative_to(ROOT))] = m.group(1)
    assert any("expansion-service" in k for k in found), "scripts/kafka.sh install ran"
    others = {k: v for k, v in found.items() if v != VERSION}
    assert not others, f"jars of another Beam version: {others}"
    prism = ROOT / ".cache/bin/prism.version"
    if prism.exists():
        assert prism.read_text().strip() == f"v{VERSION}"
