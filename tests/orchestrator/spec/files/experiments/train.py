"""Stand-in experiment for tests: load_sweeps only checks that the file exists."""
