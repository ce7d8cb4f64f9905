"""flexprice-beam: stream usage events into Flexprice with Apache Beam."""

__version__ = "0.1.0"
