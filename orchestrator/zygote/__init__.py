"""Zygotes: a process that imported the heavy modules once forks each trial, so that no trial pays for them.

One implementation serves every place a trial is forked rather than started:

- ``workers.py``: a launch's own zygote (``--forker``) forks one **worker per slot**, and each worker forks its
  slot's trials (orchestrator/executors/warm.py, when no zygote outlives the launch);
- ``daemon.py``: the **zygote daemon**, which outlives the process that started it and forks each trial a
  connection asks for (with a lifeline): on a remote box for its launchers (orchestrator/remote.py), and as the
  controller's kept zygote (``--local``) for the local trials (executors/warm.py) and for hot launches
  (orchestrator/front.py);
- ``client.py``: the requesting side of a daemon (start, connect, fork, wait; ``zygotes()`` for status);
- ``keys.py``: which zygote serves a trial (its start-up environment and code version) and where it lives;
- ``forking.py``: process groups (signal, end what a trial left, die with the parent, reap) — shared with the
  fresh-process executors;
- ``preload.py``: what a zygote imports (``PRELOAD``, by name at run time: importing this package imports no
  torch) and what a forked trial does (own its temp dirs, run its module as ``__main__``).

``python -m orchestrator.zygote --zygote FOLDER NAME [--local] | --forker MODULE… | --worker MODULE…``.
Standard library only (plus orchestrator.trial): the daemon runs on remote boxes before anything is checked.
"""
