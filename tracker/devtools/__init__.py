"""Developer tools that ship with the package: the demo, the benchmark, its load generator."""
