"""Built-in experiments: entry points a trial runs as ``python -m experiments.<name> RUN_DIR``.

The controller never imports this package. It runs an experiment as a subprocess and asks for its torch-free
checks through ``python -m experiments.check`` (see that module); ``experiments.config`` holds the typed
defaults and the checks (no torch there either).
"""
