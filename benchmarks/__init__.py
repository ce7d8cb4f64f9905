"""Benchmarks for flexprice-beam: ``.venv/bin/python benchmarks/run.py [--quick] [--only P0,P1]``."""
