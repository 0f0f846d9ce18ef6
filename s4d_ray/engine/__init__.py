"""The engine: the row protocol (`rows`: declared, checked columns), per-clip stage
transforms, the one stage list, the runner and its in-process twin, the Ray Data graph and its
run, output formats, resume, configuration and metrics."""
