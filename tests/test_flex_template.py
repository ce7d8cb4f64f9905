"""The Dataflow Flex Template (docker/flex-template), checked offline against the pinned versions,
and its entry point (flexprice_beam.launch.main) run as the launcher would run it."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import apache_beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from flexprice_beam.launch import main as entry
from flexprice_beam.pipelines import collector as entry_collector
from flexprice_beam.pipelines.collector import CollectorOptions
from tests.test_dataflow_translation import DATAFLOW_ARGS, IMAGE, SECRET

ROOT = Path(__file__).resolve().parent.parent
FLEX = ROOT / "docker" / "flex-template"
CONFIG = """
input:
  generate: {count: 0, seed: 1}
output:
  flexprice: {api_host: api.cloud.flexprice.io, api_key: "${FLEXPRICE_API_KEY}"}
"""


def _instructions(path: Path) -> list[tuple[str, str]]:
    out = []
    for line in path.read_text().replace("\\\n", " ").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def _env(ins) -> dict[str, str]:
    env = {}
    for op, rest in ins:
        if op == "ENV":
            env.update(p.split("=", 1) for p in shlex.split(rest))
    return env


def _args(ins) -> dict[str, str]:
    return dict(rest.split("=", 1) for op, rest in ins if op == "ARG" and "=" in rest)


def test_launcher_image_matches_the_worker_image_and_the_pins():
    ins = _instructions(FLEX / "Dockerfile")
    args = _args(ins)
    froms = [rest for op, rest in ins if op == "FROM"]
    assert len(froms) == 1
    m = re.fullmatch(r"gcr\.io/dataflow-templates-base/python(\d)(\d+)-template-launcher-base"
                     r":\$\{LAUNCHER_TAG\}", froms[0])
    assert m, froms[0]
    launcher_py = (int(m.group(1)), int(m.group(2)))
    wins = _instructions(ROOT / "Dockerfile")
    worker = [rest for op, rest in wins if op == "FROM"][0].replace(
        "${BEAM_VERSION}", _args(wins)["BEAM_VERSION"])
    w = re.fullmatch(r"apache/beam_python(\d+)\.(\d+)_sdk:(\S+)", worker)
    # The launcher pickles the DoFns that the workers unpickle: same Python minor, same Beam.
    assert launcher_py == (int(w.group(1)), int(w.group(2))) == sys.version_info[:2]
    assert args["BEAM_VERSION"] == w.group(3) == apache_beam.__version__
    assert re.search(rf"^apache-beam(\[[a-z,]+\])?=={re.escape(apache_beam.__version__)}$",
                     (ROOT / "requirements.txt").read_text(), re.M)
    run = " ".join(rest for op, rest in ins if op == "RUN")
    assert 'apache-beam[gcp]==${BEAM_VERSION}' in run and "-r requirements.txt" in run
    assert "openjdk-17-jre-headless" in run, "Java for the Kafka expansion service at launch"
    assert "sdks:java:io:expansion-service:shadowJar" in run


def test_launcher_env_points_at_files_the_image_contains():
    ins = _instructions(FLEX / "Dockerfile")
    env = _env(ins)
    workdir = [rest for op, rest in ins if op == "WORKDIR"][-1]
    copied = {}
    for op, rest in ins:
        if op == "COPY":
            *srcs, dest = shlex.split(rest)
            for src in srcs:
                target = dest if not dest.endswith("/") and len(srcs) == 1 and not dest == "./" \
                    else str(Path(dest) / Path(src).name)
                copied[str((Path(workdir) / target).resolve())] = src
    ignored = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
               if p.strip() and not p.startswith("#")]
    for src in copied.values():
        assert (ROOT / src).exists(), src
        assert not any(fnmatch.fnmatch(src, pat) or src.split("/")[0] == pat for pat in ignored), \
            f"{src} is excluded from the build context by .dockerignore"
    py_file, setup_file = env["FLEX_TEMPLATE_PYTHON_PY_FILE"], env["FLEX_TEMPLATE_PYTHON_SETUP_FILE"]
    assert copied[py_file] == "docker/flex-template/launch.py"
    assert copied[setup_file] == "setup.py"


def test_metadata_parameters_are_known_to_the_entry_point():
    meta = json.loads((FLEX / "metadata.json").read_text())
    assert meta["name"] and meta["description"] and meta["streaming"] is True
    params = meta["parameters"]
    names = [p["name"] for p in params]
    assert len(names) == len(set(names))
    ours = {a.dest for a in entry.build_parser()._actions}
    beam = set(PipelineOptions([]).get_all_options()) | {"kafka_expansion_service"}
    for p in params:
        assert p["label"] and p["helpText"] and p.get("isOptional") is True, p["name"]
        assert p["name"] in ours or p["name"] in beam, p["name"]
    regex = {p["name"]: [re.compile(r) for r in p.get("regexes", [])] for p in params}
    ok = {"config": ["gs://bucket/collector.yaml", "examples/kafka-consumer.yaml"],
          "api_key_secret": ["projects/p/secrets/flexprice-api-key/versions/latest"],
          "kafka_expansion_service": ["expansion.internal:8097"]}
    bad = {"config": ["gs://bucket/"], "api_key_secret": ["fp_live_123"],
           "kafka_expansion_service": ["expansion.internal"]}
    for name, values in ok.items():
        assert all(any(r.fullmatch(v) for r in regex[name]) for v in values), name
    for name, values in bad.items():
        assert not any(any(r.fullmatch(v) for r in regex[name]) for v in values), name
    # parameters arrive as --name=value, the way the launcher passes them
    assert CollectorOptions(["--kafka_expansion_service=h:1"]).kafka_expansion_service == "h:1"


def test_entry_point_submits_a_dataflow_job_offline(tmp_path, monkeypatch):
    """``launch.py``'s main with a config file and Dataflow options: a dry-run submission.
    ``--api_key_secret`` becomes the key source the workers read; the launcher reads nothing."""
    cfg = tmp_path / "collector.yaml"
    cfg.write_text(CONFIG)
    monkeypatch.delenv("FLEXPRICE_API_KEY", raising=False)
    built = {}
    real_build = entry_collector.build
    monkeypatch.setattr(entry_collector, "build",
                        lambda p, c, **kw: built.setdefault("cfg", c) and real_build(p, c, **kw))
    rc = entry.main(["--config", str(cfg), "--api_key_secret", "projects/p/secrets/k/versions/7",
                     *DATAFLOW_ARGS])
    assert rc == 0
    flex = built["cfg"].output.flexprice
    assert flex.api_key_secret == "projects/p/secrets/k/versions/7" and flex.api_key is None
    import os

    assert "FLEXPRICE_API_KEY" not in os.environ


def test_a_literal_key_is_refused_at_launch(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FLEXPRICE_API_KEY", SECRET)
    cfg = tmp_path / "collector.yaml"
    cfg.write_text(CONFIG)
    assert entry.main(["--config", str(cfg), *DATAFLOW_ARGS]) == 2
    err = capsys.readouterr().err
    assert "output.flexprice.api_key: use api_key_env: FLEXPRICE_API_KEY" in err
    assert SECRET not in err


def test_inside_the_launcher_the_runner_is_dataflow_and_kafka_streams(monkeypatch):
    from flexprice_beam.core.config import load_config_text

    kafka = load_config_text("""
input: {kafka: {addresses: ["b:9092"], topics: [t]}}
output: {flexprice: {api_host: api.cloud.flexprice.io, api_key: k}}
""")
    monkeypatch.delenv(entry.LAUNCHER_ENV, raising=False)
    assert entry.remote_options(kafka, []) is None  # no runner outside the launcher: local
    monkeypatch.setenv(entry.LAUNCHER_ENV, "/template/launch.py")
    opts = entry.remote_options(kafka, [f"--sdk_container_image={IMAGE}"])
    std = opts.view_as(StandardOptions)
    assert std.runner == "DataflowRunner" and std.streaming


def test_config_errors_exit_2_and_launch_py_runs(tmp_path):
    assert entry.main(["--config_yaml", "input: {}\n"]) == 2
    out = subprocess.run([sys.executable, str(FLEX / "launch.py"), "--help"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--config_yaml" in out.stdout


def test_missing_config_file_is_reported(capsys):
    assert entry.main(["--config", "missing.yaml"]) == 2
    assert "missing.yaml" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.kafka  # the Java expansion service (a JVM): scripts/kafka.sh installs it
def test_entry_point_expands_kafka_for_dataflow(tmp_path, monkeypatch):
    """Kafka input at launch: the bundled Java expansion service is started, then stopped."""
    monkeypatch.setenv(entry.LAUNCHER_ENV, "/template/launch.py")  # → DataflowRunner, streaming
    cfg = tmp_path / "kafka.yaml"
    cfg.write_text("input: {kafka: {addresses: ['b:9092'], topics: [usage]}}\n"
                   "output: {flexprice: {api_host: api.cloud.flexprice.io, "
                   "api_key_env: FLEXPRICE_API_KEY}}\n")
    args = [a for a in DATAFLOW_ARGS if not a.startswith("--runner")]
    assert entry.main(["--config", str(cfg), *args]) == 0
