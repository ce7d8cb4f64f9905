"""Local Flexprice stand-in (``MockFlexprice``) with fault injection, for tests and benchmarks."""

from .faults import FaultConfig
from .server import MockFlexprice, RequestRecord, main

__all__ = ["FaultConfig", "MockFlexprice", "RequestRecord", "main"]
