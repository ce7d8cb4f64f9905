"""flexprice-beam: installable locally and on Beam workers (``--setup_file ./setup.py``)."""

from setuptools import find_packages, setup

setup(
    name="flexprice-beam",
    version="0.1.0",
    description="Stream usage events into Flexprice with Apache Beam",
    packages=find_packages(include=["flexprice_beam", "flexprice_beam.*"]),
    python_requires=">=3.10",
    install_requires=[
        "apache-beam[aws]>=2.77.0,<2.78",  # [aws]: s3:// dead letters
        "kafka-python>=2.0.2,<4",
        "requests>=2.31,<3",
        "pydantic>=2.7,<3",
        "jmespath>=1.0,<2",
        "orjson>=3.9,<4",
        "PyYAML>=6,<7",
        "prometheus_client>=0.20,<1",
    ],
    extras_require={"test": ["pytest>=8", "hypothesis>=6", "ruff>=0.5"]},
    entry_points={"console_scripts": ["flexprice-beam=flexprice_beam.cli:main"]},
)
