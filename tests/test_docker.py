"""The Dockerfile, checked statically (no Docker engine here): versions, user, port, secrets."""

from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import Path

import apache_beam

ROOT = Path(__file__).resolve().parent.parent
SECRET = re.compile(r"KEY|PASSWORD|SECRET|TOKEN", re.I)


def _instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def _env_pairs(rest: str) -> dict[str, str]:
    parts = shlex.split(rest)
    if len(parts) == 2 and "=" not in parts[0]:  # legacy "ENV KEY value"
        return {parts[0]: parts[1]}
    return dict(p.split("=", 1) for p in parts)


def test_base_image_matches_beam_and_python():
    froms = [rest for op, rest in _instructions() if op == "FROM"]
    assert len(froms) == 1
    m = re.fullmatch(r"apache/beam_python(\d+)\.(\d+)_sdk:(\S+)", froms[0])
    assert m, f"the Beam SDK image, so one image is both CLI and SDK harness: {froms[0]}"
    assert m.group(3) == apache_beam.__version__
    # DoFns pickled by the launcher are unpickled in this image: same Python minor.
    assert (int(m.group(1)), int(m.group(2))) == sys.version_info[:2]
    pinned = (ROOT / "requirements.txt").read_text()
    assert re.search(rf"^apache-beam(\[[a-z,]+\])?=={re.escape(apache_beam.__version__)}$",
                     pinned, re.M)


def test_runs_as_non_root_exposes_4195_and_has_the_default_command():
    ins = _instructions()
    users = [rest for op, rest in ins if op == "USER"]
    assert users, "a USER instruction"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    last_user = max(i for i, (op, _) in enumerate(ins) if op == "USER")
    assert not any(op == "RUN" for op, _ in ins[last_user:]), "nothing runs as root after USER"
    exposed = {p.split("/")[0] for op, rest in ins if op == "EXPOSE" for p in rest.split()}
    assert "4195" in exposed
    cmd = [rest for op, rest in ins if op == "CMD"][-1]
    assert "examples/generate.yaml" in cmd and (ROOT / "examples/generate.yaml").exists()
    entry = ROOT / "docker/entrypoint.sh"
    assert entry.exists() and os.access(entry, os.X_OK)
    assert "/opt/apache/beam/boot" in entry.read_text()
    generate = (ROOT / "examples/generate.yaml").read_text()
    assert "${FLEXPRICE_API_HOST}" in generate and "${FLEXPRICE_API_KEY}" in generate


def test_no_secrets_baked_in():
    for op, rest in _instructions():
        if op == "ENV":
            for key, value in _env_pairs(rest).items():
                assert not (SECRET.search(key) and value), f"ENV {key} carries a value"
        if op == "ARG":
            assert not SECRET.search(rest.split("=")[0]), f"ARG {rest} would leak via history"
        if op in ("COPY", "ADD"):
            assert not re.search(r"\.env\b|\.pem\b|\.key\b", rest), rest
    ignore = (ROOT / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", ".env", "dead-letter"):
        assert entry in ignore
