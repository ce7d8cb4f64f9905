"""The operating commands: check, replay-dead-letters, backfill (launch runs the graph)."""
