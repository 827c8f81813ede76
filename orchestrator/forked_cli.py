"""What the controller zygote runs for a hot launch (orchestrator/front.py): ``orchestrate`` itself, from the
``orchestrator.cli`` the zygote already imported.

The zygote runs a module as ``python -m`` would (``runpy``). Run as that module, ``orchestrator.cli`` — preloaded,
so already in ``sys.modules`` — was executed a second time as ``__main__`` (a second copy of the CLI, and a
``RuntimeWarning`` on every hot launch's stderr); this module is never preloaded, and calls the imported one.
"""

from orchestrator.cli import main

main()
