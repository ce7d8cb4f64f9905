"""flexprice-beam: installable locally and on Beam workers (``--setup_file ./setup.py``)."""

from pathlib import Path

from setuptools import find_packages, setup

# The one Beam version of the project (Python SDK, Java jars, Prism, images): BEAM_VERSION.
_BEAM = (Path(__file__).resolve().parent / "BEAM_VERSION").read_text().strip()
_MAJOR, _MINOR, _ = _BEAM.split(".")

setup(
    name="flexprice-beam",
    version="0.1.0",
    description="Stream usage events into Flexprice with Apache Beam",
    packages=find_packages(include=["flexprice_beam", "flexprice_beam.*"]),
    python_requires=">=3.10",
    install_requires=[
        f"apache-beam[aws]>={_BEAM},<{_MAJOR}.{int(_MINOR) + 1}",  # [aws]: s3:// dead letters
        "kafka-python>=2.0.2,<4",
        "crc32c>=2.3,<3",  # kafka-python's record CRC check in C (bounded Kafka reads)
        "requests>=2.31,<3",
        "flexprice>=2.1.43,<3",  # check's look-ups (io/api.py): the official SDK
        "pydantic>=2.7,<3",
        "jmespath>=1.0,<2",
        "orjson>=3.9,<4",
        "httptools>=0.6,<1",  # the sink's HTTP answers (io/flexprice/transport.py)
        "PyYAML>=6,<7",
        "prometheus_client>=0.20,<1",
    ],
    extras_require={"test": ["pytest>=8", "hypothesis>=6", "ruff>=0.5"],
                    # output.flexprice.api_key_secret: Secret Manager, read on the workers
                    "gcp": ["google-cloud-secret-manager>=2.20,<3"]},
    entry_points={"console_scripts": ["flexprice-beam=flexprice_beam.cli:main"]},
)
