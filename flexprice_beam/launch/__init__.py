"""Running the graph: local engines (FnApiRunner, Prism), Flink, the Flex Template entry,
and what a launcher needs meanwhile (the metrics server, progress)."""
