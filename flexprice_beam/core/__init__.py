"""The bottom layer: events, config, live counters, the stop signal and the offset tracker.
Everything may import these; they import nothing of ours above them."""
