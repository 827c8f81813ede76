"""Every W&B call of the training experiment, in one place.

``wandb.init`` takes only the config: the controller's environment supplies the rest (``WANDB_MODE``,
``WANDB_DIR``, ``WANDB_PROJECT``, ``WANDB_RUN_GROUP``, ``WANDB_NAME``, ``WANDB_RUN_ID``, ``WANDB_TAGS``). Run by
hand with no ``WANDB_MODE`` set, runs are offline (never online by surprise). ``WANDB_MODE=disabled`` gives a
no-op run. W&B failures never fail a trial: they are printed to stderr and logging is switched off.

Every W&B call runs on one background thread, in order: ``wandb.init`` (≈0.7–1 s offline: it starts W&B's
service) overlaps the first training epoch instead of delaying it, and logging tables and images never
stalls the training loop. ``finish`` waits for everything queued.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np


class Logger:
    """A thin wrapper around one W&B run, driven from a background thread (no run → every call is a no-op)."""

    def __init__(self, run: Any = None, pool: ThreadPoolExecutor | None = None) -> None:
        self.run = run
        self._pool = pool
        self._last: Future[Any] | None = None

    @classmethod
    def start(
        cls, config: dict[str, Any], run_dir: Path, metric: str, goal: str, *, resume: bool = False
    ) -> Logger:
        mode = os.environ.get("WANDB_MODE", "offline")
        if mode == "disabled":
            return cls(None)
        logger = cls(None, ThreadPoolExecutor(max_workers=1, thread_name_prefix="wandb"))

        def init() -> None:
            try:
                import wandb

                kwargs: dict[str, Any] = {"config": config, "mode": mode}
                if not os.environ.get("WANDB_DIR"):
                    kwargs["dir"] = str(run_dir)
                if resume and os.environ.get("WANDB_RUN_ID"):
                    kwargs["resume"] = "allow"
                run = wandb.init(**kwargs)
                run.define_metric("epoch")
                run.define_metric("*", step_metric="epoch")
                run.define_metric(metric, summary="max" if goal == "maximize" else "min", step_metric="epoch")
                logger.run = run
            except Exception as exc:  # noqa: BLE001 - logging must not kill the trial
                print(f"warning: wandb.init failed, logging disabled: {exc}", file=sys.stderr)

        logger._submit(init)
        return logger

    def _submit(self, fn: Callable[[], None]) -> None:
        if self._pool is not None:
            self._last = self._pool.submit(fn)

    @property
    def run_path(self) -> str | None:
        """The run's folder (offline-run-…/run-…), once ``wandb.init`` has finished (else None)."""
        if self.run is None:
            return None
        try:
            return str(Path(self.run.dir).parent)
        except Exception:  # noqa: BLE001
            return None

    def wait(self) -> None:
        """Block until every queued W&B call (``wandb.init`` included) has run."""
        if self._last is not None:
            self._last.result()

    def _safe(self, fn: Any, *args: Any, **kwargs: Any) -> None:
        """Queue one W&B call behind the ones before it; failures are printed, never raised."""

        def call() -> None:
            if self.run is None:
                return
            try:
                fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001
                print(f"warning: wandb call failed: {exc}", file=sys.stderr)

        self._submit(call)

    def log(self, epoch: int, metrics: dict[str, Any]) -> None:
        """One epoch's metrics (x-axis ``epoch``, 1-based like the protocol's steps)."""
        self._safe(lambda: self.run.log({**metrics, "epoch": epoch}))

    def confusion(
        self, key: str, y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str], title: str
    ) -> None:
        def go() -> None:
            import wandb

            keep = np.asarray(y_true) >= 0
            plot = wandb.plot.confusion_matrix(
                y_true=np.asarray(y_true)[keep].tolist(),
                preds=np.asarray(y_pred)[keep].tolist(),
                class_names=list(class_names),
                title=title,
            )
            self.run.log({key: plot})

        self._safe(go)

    def samples(self, key: str, images: np.ndarray, columns: dict[str, Sequence[Any]]) -> None:
        """A table of sample predictions: an image column, then ``columns`` (true/pred/confidence per task)."""

        def go() -> None:
            import wandb

            names = list(columns)
            table = wandb.Table(columns=["image", *names])
            for i in range(len(images)):
                table.add_data(wandb.Image(np.asarray(images[i])), *[columns[n][i] for n in names])
            self.run.log({key: table})

        self._safe(go)

    def finish(self, summary: dict[str, Any], exit_code: int = 0, tags: Sequence[str] = ()) -> None:
        """Write the summary (and add ``tags``), finish the run and wait for every queued call (the run's files
        are complete)."""
        if self._pool is None:
            return
        self._safe(lambda: self.run.summary.update(summary))
        if tags:
            self._safe(lambda: setattr(self.run, "tags", (*(self.run.tags or ()), *tags)))
        self._safe(lambda: self.run.finish(exit_code=exit_code))
        self._pool.shutdown(wait=True)
        self._pool = None
        self.run = None
