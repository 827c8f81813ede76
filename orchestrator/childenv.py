"""What a trial's process gets: its command line (``_argv``), its environment (``_env``: the slot's devices,
the run dir, W&B's settings and sweep id) and the warm zygote's head start (``_warm_up``).

``Controller`` mixes this in (like ``Coordination``); the state it uses (``opts``, ``specs``, ``runners``,
``executor``, ``cache_dir``) is the controller's. The methods are the controller's own, moved here unchanged.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any

from orchestrator.executors import Executor
from orchestrator.slots import Slot
from orchestrator.trial.rundir import PROJECT_ROOT, RunDir
from orchestrator.wandb_env import child_env


class ChildEnv:
    """Methods of ``Controller`` that build what a trial's process starts with."""

    opts: Any
    specs: list[Any]
    runners: list[Any]
    executor: Executor
    cache_dir: Path

    def _argv(self, spec: Any, run_dir: RunDir, nested: dict[str, Any]) -> list[str]:
        if spec.experiment:
            return [sys.executable, "-u", "-m", f"experiments.{spec.experiment}", str(run_dir.path)]
        from orchestrator.command import build_command

        # like a W&B agent: a relative program is found from the directory `launch` runs in
        return build_command(
            spec, nested, program_path_root=Path.cwd(), args_json_file=run_dir.args_json, run_dir=run_dir.path
        )

    def _process_env(self, spec: Any, slot: Slot) -> dict[str, str]:
        """The environment every trial of ``spec`` on ``slot`` starts with (what a warm zygote needs too)."""
        env = dict(os.environ)
        env.update(slot.env())
        pythonpath = [str(PROJECT_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        env.update(
            {
                "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": os.pathsep.join(pythonpath),
                "ORCHESTRATE_SWEEP": spec.name,
                "ORCHESTRATE_CACHE_DIR": str(self.cache_dir),
            }
        )
        if not spec.experiment:
            # a user's W&B program: the bridge that turns its wandb.log calls into protocol reports
            # (wandb_bridge/sitecustomize.py)
            from orchestrator.trial.wandb_bridge import BRIDGE_DIR, ENV_ENABLE, ENV_METRIC

            env["PYTHONPATH"] = os.pathsep.join([str(BRIDGE_DIR), *pythonpath])
            env[ENV_ENABLE] = "1"
            env[ENV_METRIC] = spec.metric.name if spec.metric is not None else ""
        return env

    def _warm_up(self) -> None:
        """Start the warm zygote the first local trials need now: its imports overlap opening the storage."""
        slot = next((s for s in self.opts.slots if s.host == "local"), None)
        if slot is None:
            return
        for spec in self.specs:
            if spec.experiment:
                argv = [sys.executable, "-u", "-m", f"experiments.{spec.experiment}"]
            elif spec.command and str(spec.command[0]) == "${interpreter}":
                argv = [sys.executable]
                for word in spec.command[1:]:
                    if str(word).startswith("${"):
                        break
                    argv.append(str(word))
            else:
                continue
            cwd = PROJECT_ROOT if spec.experiment else Path.cwd()
            # only a head start: the first trial's start meets (and reports) the same fault
            with contextlib.suppress(Exception):
                self.executor.warm_up(argv, self._process_env(spec, slot), cwd)
            return

    def _env(
        self,
        spec: Any,
        slot: Slot,
        run_dir: RunDir,
        number: int,
        wandb_id: str,
        fold: int | None = None,
        *,
        params: dict[str, Any],  # the trial's (TrialSpec.params): a program's W&B parameters file
    ) -> dict[str, str]:
        env = self._process_env(spec, slot)
        env.update({"ORCHESTRATE_RUN_DIR": str(run_dir.path.resolve()), "ORCHESTRATE_TRIAL": str(number)})
        tags = [f"sweep:{spec.name}", f"slot:{slot.id}"] + ([f"fold:{fold}"] if fold is not None else [])
        param_path: Path | None = None
        # every run of a sweep carries its sweep id (kept in the study), so W&B groups them as one sweep
        from orchestrator.wandb_env import (
            SWEEP_ID_ATTR,
            new_sweep_id,
            sweep_param_path,
            write_sweep_params,
        )

        ids: dict[str, str] = self.__dict__.setdefault("_wandb_sweep_ids", {})
        if spec.name not in ids:
            study = next(r.study for r in self.runners if r.spec is spec)
            stored = study.user_attrs.get(SWEEP_ID_ATTR)
            if not stored:
                stored = new_sweep_id()
                study.set_user_attr(SWEEP_ID_ATTR, stored)
            ids[spec.name] = str(stored)
        sweep_id = ids[spec.name]
        if not spec.experiment:
            # a user's W&B program: the parameters file a W&B agent gives (wandb_env.py)
            param_path = sweep_param_path(run_dir.path.resolve(), sweep_id, wandb_id)
            write_sweep_params(param_path, params)
        env.update(
            child_env(
                mode=self.opts.wandb_mode,
                run_dir=run_dir.path.resolve(),
                project=spec.project,
                entity=spec.entity,
                group=spec.name,
                name=f"{spec.name}-{number}" + ("" if fold is None else f"-fold{fold}"),
                run_id=wandb_id,
                tags=tags,
                cache_dir=self.cache_dir,
                sweep_id=sweep_id,
                param_path=param_path,
                job_type=self._job_type(spec, fold),
            )
        )
        return env

    def _job_type(self, spec: Any, fold: int | None) -> str:
        """The W&B run's job_type: finetune (a second stage), pretrain (a first), fold (one of k), train."""
        if getattr(spec, "depends_on", None):
            return "finetune"
        if any(getattr(s, "depends_on", None) == spec.name for s in self.specs):
            return "pretrain"
        return "train" if fold is None else "fold"
