"""``python -m orchestrator.zygote``: a zygote daemon (``--zygote FOLDER NAME [--local]``), a launch's worker
forker (``--forker MODULE…``) or a worker on its own (``--worker MODULE…``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    if argv[:1] == ["--zygote"] and len(argv) in (3, 4):
        from orchestrator.zygote.daemon import zygote_main

        return zygote_main(Path(argv[1]), argv[2], local=argv[3:] == ["--local"])
    if argv[:1] == ["--forker"]:
        from orchestrator.zygote.workers import forker_main

        forker_main(argv[1:])
        return 0
    if argv[:1] == ["--worker"]:
        from orchestrator.zygote.workers import worker_main

        worker_main(argv[1:])
        return 0
    print(
        "usage: python -m orchestrator.zygote --zygote FOLDER NAME [--local] | --forker|--worker MODULE…",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    code = main(sys.argv[1:])
    if sys.argv[1:2] == ["--zygote"]:
        # a daemon leaves without an interpreter shutdown (as its trials do: nothing it imported runs at exit)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
