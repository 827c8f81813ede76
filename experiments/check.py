"""The one seam between the controller and the built-in experiments: torch-free checks over a subprocess.

The controller never imports experiment code (docs/interfaces.md, "The package boundary"). To check a sweep's
parameters before anything starts, or to learn which dataset a trial reads, it runs::

    python -m experiments.check  <  {"requests": [{"op": "validate", "experiment": "train", "params": {…}}, …]}

and reads one JSON answer on stdout, one result per request, in order::

    {"results": [{"ok": true, "reported": ["val/loss", …], "dataset": "adience", "data_root": null,
                  "pretrained": null},
                 {"ok": false, "message": "…", "key": "lr", "hint": "…"}]}

``op`` is ``validate`` (resolve and check the params; the metrics a trial with them reports) or ``resolve``
(the same, without the reported metrics). Nothing here imports torch; a request that crashes the checker is a
bug of the checker, and the controller reports the checker's stderr.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from experiments import config
from orchestrator.trial.errors import SpecError


def answer(request: dict[str, Any]) -> dict[str, Any]:
    experiment = str(request.get("experiment") or "")
    params = request.get("params") or {}
    try:
        resolved = config.validate(experiment, params)
        out: dict[str, Any] = {
            "ok": True,
            "dataset": resolved.get("dataset"),
            "data_root": resolved.get("data_root"),
            "pretrained": resolved.get("pretrained"),  # a weights file the controller checks exists
        }
        if request.get("op", "validate") == "validate":
            out["reported"] = config.reported_metrics(experiment, params)
        return out
    except SpecError as exc:
        return {"ok": False, "message": exc.detail, "key": exc.key, "hint": exc.hint}


def main() -> int:
    payload = json.load(sys.stdin)
    results = [answer(r) for r in payload.get("requests", [])]
    json.dump({"results": results}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
