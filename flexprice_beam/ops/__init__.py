"""Operating the collector: live metrics, progress, preflight checks, dead-letter replay."""
