"""The Flexprice delivery engine: policy, transport, executor, concurrency limit and sink."""
