"""Experiment tracking (`tracking:`): every stage's settings and results where a team looks.

One tracking run per pipeline (the run directory; a rerun continues it) with one nested run per
stage attempt: params (the stage's resolved recipe section, flattened), metrics (the numbers the
stage put in the manifest: eval scores, bench points with the concurrency as the step, cost,
route, curation counts, training figures), its status (FINISHED / FAILED) and artifacts (the
report with its plots on the pipeline run, the model cards on export's). The trainers' own loss
curves come from transformers' `report_to` integrations, each trainer a run nested under its
stage's (`trainer_env`: the environment transformers' MLflowCallback reads).

Backends:
- `mlflow`: MlflowClient on `tracking.uri`, default an embedded SQLite store in the run
  directory (`sqlite:///<run>/mlflow.db`, artifacts beside it): `mlflow ui --backend-store-uri
  sqlite:///<run>/mlflow.db` opens it with no server; a team server's URI works the same way.
- `wandb`: W&B has no nested runs, so each stage attempt is a run of its own in one group per
  pipeline (`<recipe>/<profile>`, job type = the stage), the trainers' runs in the same group;
  `offline` (the default) writes `<run>/wandb/offline-run-*` that `wandb sync` uploads later,
  `online` needs WANDB_API_KEY (or `wandb login`). The key is read by wandb from the environment.
- `tensorboard`: the stage metrics as scalars in `<run>/tensorboard/` beside the trainers' events.
- `none`: nothing is logged (the trainers report to no integration either).
The URI is never written to the manifest (it may carry credentials); only the run ids are.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from verticalft.recipe import Recipe
    from verticalft.rundir import RunDir

MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
_KEY_OK = re.compile(r"[^0-9A-Za-z_\-. /:]")


def report_to(recipe: Recipe) -> list[str]:
    """The trainers' `report_to`: TensorBoard always (the stage folder's events), plus the
    tracking backend's own integration."""
    backend = recipe.tracking.backend
    if backend == "none":
        return ["none"]
    return ["tensorboard", backend] if backend in ("mlflow", "wandb") else ["tensorboard"]


def flat_params(section: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A recipe section as MLflow params: nested keys joined with '.', values as text."""
    out: dict[str, str] = {}
    for k, v in section.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flat_params(v, key + "."))
        else:
            text = v if isinstance(v, str) else json.dumps(v, default=str)
            out[_KEY_OK.sub("_", key)] = text[:MAX_PARAM_CHARS]
    return out


def flat_metrics(metrics: Any, prefix: str = "") -> list[tuple[str, float, int]]:
    """(key, value, step) for every finite number in a stage's metrics. A list of sweep points
    (dicts with `max_concurrency`) becomes one series per figure, the concurrency as its step;
    any other list is indexed in the key. Booleans count as 0/1."""
    out: list[tuple[str, float, int]] = []
    if isinstance(metrics, Mapping):
        for k, v in metrics.items():
            out += flat_metrics(v, f"{prefix}{k}/")
    elif isinstance(metrics, list):
        if metrics and all(isinstance(p, Mapping) and "max_concurrency" in p for p in metrics):
            for p in metrics:
                step = int(p["max_concurrency"])
                out += [
                    (key, value, step)
                    for key, value, _ in flat_metrics(p, prefix)
                    if not key.endswith("max_concurrency")
                ]
        else:
            for i, v in enumerate(metrics):
                out += flat_metrics(v, f"{prefix}{i}/")
    elif isinstance(metrics, bool) or isinstance(metrics, int | float) and math.isfinite(metrics):
        out.append((_KEY_OK.sub("_", prefix.rstrip("/")), float(metrics), 0))
    return out


class Tracker:
    """What the pipeline tells a backend: a stage started, finished or failed; artifacts."""

    def stage_started(self, stage: str, section: Mapping[str, Any]) -> dict[str, str]:
        """Returns the environment the stage's trainers need."""
        return {}

    def stage_ended(self, stage: str, metrics: Mapping[str, Any], wall_time_s: float, failed: bool) -> None:
        pass

    def artifacts(self, paths: list[Path], stage: str | None = None, by_folder: bool = False) -> None:
        """Files or folders on the pipeline's run (or `stage`'s last run); `by_folder`: each file
        under the name of its folder (the export's README.md of every model)."""

    def close(self) -> None:
        pass


class MlflowTracker(Tracker):
    def __init__(self, recipe: Recipe, run: RunDir) -> None:
        import mlflow
        from mlflow import MlflowClient

        self._mlflow, self.run = mlflow, run
        self.uri = recipe.tracking.uri or f"sqlite:///{run.root.resolve() / 'mlflow.db'}"
        self.client = MlflowClient(tracking_uri=self.uri)
        self.experiment_name = recipe.tracking.experiment or f"{recipe.name}/{run.root.name}"
        found = self.client.get_experiment_by_name(self.experiment_name)
        if found is not None:
            self.experiment_id = found.experiment_id
        else:
            artifacts = (
                (run.root.resolve() / "mlflow-artifacts").as_uri() if recipe.tracking.uri is None else None
            )
            self.experiment_id = self.client.create_experiment(
                self.experiment_name, artifact_location=artifacts
            )
        self.parent = self._pipeline_run(recipe)
        self.stage_runs: dict[str, str] = {}

    def _pipeline_run(self, recipe: Recipe) -> str:
        """The pipeline's run: the one this run directory started before (a rerun continues
        it), else a new one."""
        known = self.run.manifest().get("tracking", {}).get("mlflow_run_id")
        if known:
            try:
                if self.client.get_run(known).info.experiment_id == self.experiment_id:
                    self.client.update_run(known, status="RUNNING")
                    self._killed_attempts(known)
                    return str(known)
            except self._mlflow.exceptions.MlflowException:
                pass  # another store (tracking.uri changed): start anew there
        created = self.client.create_run(
            self.experiment_id,
            run_name=f"{recipe.name}/{self.run.root.name}",
            tags={"verticalft.run_dir": str(self.run.root)},
        )
        self.run.set_meta(
            tracking={
                "backend": "mlflow",
                "mlflow_run_id": created.info.run_id,
                "experiment": self.experiment_name,
            }
        )
        return str(created.info.run_id)

    def _killed_attempts(self, parent: str) -> None:
        """A stage run still RUNNING under a pipeline run that is starting again was killed with
        its process (SIGKILL, SIGTERM): mark it so, as the manifest does."""
        for r in self.client.search_runs(
            [self.experiment_id], f"tags.mlflow.parentRunId = '{parent}' and attributes.status = 'RUNNING'"
        ):
            self.client.set_terminated(r.info.run_id, status="KILLED")

    def stage_started(self, stage: str, section: Mapping[str, Any]) -> dict[str, str]:
        from mlflow.entities import Param

        child = self.client.create_run(
            self.experiment_id,
            run_name=stage,
            tags={"mlflow.parentRunId": self.parent, "verticalft.stage": stage},
        )
        rid = child.info.run_id
        self.stage_runs[stage] = rid
        params = [Param(k, v) for k, v in flat_params(section).items()]
        for i in range(0, len(params), 100):  # MLflow takes 100 params per batch
            self.client.log_batch(rid, params=params[i : i + 100])
        # transformers' MLflowCallback: each trainer a run of its own, nested under this one
        return {
            "MLFLOW_TRACKING_URI": self.uri,
            "MLFLOW_EXPERIMENT_NAME": self.experiment_name,
            "MLFLOW_TAGS": json.dumps({"mlflow.parentRunId": rid, "verticalft.stage": stage}),
            "MLFLOW_NESTED_RUN": "FALSE",
            "MLFLOW_FLATTEN_PARAMS": "TRUE",
        }

    def stage_ended(self, stage: str, metrics: Mapping[str, Any], wall_time_s: float, failed: bool) -> None:
        from mlflow.entities import Metric

        rid = self.stage_runs.pop(stage, None)
        if rid is None:
            return
        now = int(time.time() * 1000)
        points = [
            Metric(k, v, now, step) for k, v, step in flat_metrics({**metrics, "wall_time_s": wall_time_s})
        ]
        for i in range(0, len(points), 1000):  # and 1000 metrics
            self.client.log_batch(rid, metrics=points[i : i + 1000])
        self.client.set_terminated(rid, status="FAILED" if failed else "FINISHED")

    def artifacts(self, paths: list[Path], stage: str | None = None, by_folder: bool = False) -> None:
        rid = self.parent if stage is None else self._last_stage_run(stage)
        if rid is None:
            return
        for p in paths:
            if p.is_dir():
                self.client.log_artifacts(rid, str(p), artifact_path=p.name)
            elif p.is_file():
                self.client.log_artifact(rid, str(p), artifact_path=p.parent.name if by_folder else None)

    def _last_stage_run(self, stage: str) -> str | None:
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{self.parent}' and tags.`verticalft.stage` = '{stage}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return runs[0].info.run_id if runs else None

    def close(self) -> None:
        self.client.set_terminated(self.parent, status="FINISHED")


class TensorboardTracker(Tracker):
    """Stage metrics as scalars (tag: `<stage>/<key>`) in `<run>/tensorboard/`."""

    def __init__(self, run: RunDir) -> None:
        self.folder = run.root / "tensorboard"
        self.writer: Any = None

    def stage_ended(self, stage: str, metrics: Mapping[str, Any], wall_time_s: float, failed: bool) -> None:
        if self.writer is None:  # opened at the first result: a run that logs nothing leaves no folder
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.folder))
        for key, value, step in flat_metrics({**metrics, "wall_time_s": wall_time_s}):
            self.writer.add_scalar(f"{stage}/{key}", value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class WandbTracker(Tracker):
    """A W&B run per stage attempt (config: the section; metrics: the manifest's, the sweep
    concurrency as the step), grouped by pipeline; artifacts in a run of their own."""

    def __init__(self, recipe: Recipe, run: RunDir) -> None:
        import wandb

        self.wandb, self.root = wandb, run.root.resolve()
        self.project = recipe.tracking.experiment or recipe.name
        self.group = f"{recipe.name}/{run.root.name}"
        self.mode = recipe.tracking.wandb_mode
        # wandb reads its settings from the environment once per process (its first init): set
        # them before that, so a trainer's own wandb.init in this process gets them too
        os.environ.update({"WANDB_MODE": self.mode, "WANDB_DIR": str(self.root)})
        self.sections: dict[str, dict[str, str]] = {}
        run.set_meta(tracking={"backend": "wandb", "project": self.project, "group": self.group})

    def _init(self, name: str, job_type: str, config: Mapping[str, Any] | None = None) -> Any:
        if self.wandb.run is not None:  # a trainer's run left open in this process: it is over
            self.wandb.run.finish()
        return self.wandb.init(
            project=self.project,
            group=self.group,
            job_type=job_type,
            name=name,
            dir=str(self.root),
            mode=self.mode,
            config=dict(config or {}),
            reinit="create_new",
        )

    def stage_started(self, stage: str, section: Mapping[str, Any]) -> dict[str, str]:
        self.sections[stage] = flat_params(section)
        # transformers' WandbCallback calls wandb.init(), which takes group and job type from the
        # environment below — read once per wandb session: end this process's session, so an
        # in-process trainer starts one with them (a launched one starts fresh anyway)
        self.wandb.teardown()
        return {
            "WANDB_PROJECT": self.project,
            "WANDB_RUN_GROUP": self.group,
            "WANDB_JOB_TYPE": f"{stage}/trainer",
            "WANDB_DIR": str(self.root),
            "WANDB_MODE": self.mode,
        }

    def stage_ended(self, stage: str, metrics: Mapping[str, Any], wall_time_s: float, failed: bool) -> None:
        run = self._init(stage, stage, self.sections.pop(stage, None))
        steps: dict[int, dict[str, float]] = {}
        for key, value, step in flat_metrics({**metrics, "wall_time_s": wall_time_s}):
            steps.setdefault(step, {})[key] = value
        for step in sorted(steps):  # W&B steps only go forward
            run.log(steps[step], step=step)
        run.finish(exit_code=1 if failed else 0)

    def artifacts(self, paths: list[Path], stage: str | None = None, by_folder: bool = False) -> None:
        found = [p for p in paths if p.exists()]
        if not found:
            return
        what = stage or "report"
        run = self._init(f"{what} artifacts", "artifacts")
        artifact = self.wandb.Artifact(re.sub(r"[^0-9A-Za-z_.-]", "-", f"{self.group}-{what}"), type=what)
        for p in found:
            if p.is_dir():
                artifact.add_dir(str(p), name=p.name)
            else:
                artifact.add_file(str(p), name=f"{p.parent.name}/{p.name}" if by_folder else p.name)
        run.log_artifact(artifact)
        run.finish()

    def close(self) -> None:
        self.wandb.teardown()  # stops wandb's service process: nothing left behind


def tracker_for(recipe: Recipe, run: RunDir) -> Tracker:
    backend = recipe.tracking.backend
    if backend == "mlflow":
        return MlflowTracker(recipe, run)
    if backend == "wandb":
        return WandbTracker(recipe, run)
    if backend == "tensorboard":
        return TensorboardTracker(run)
    return Tracker()


def backend_problem(recipe: Recipe) -> str | None:
    """Why the chosen backend cannot run here (its package is missing), with the install line."""
    import importlib.util

    backend = recipe.tracking.backend
    if backend in ("mlflow", "wandb") and importlib.util.find_spec(backend) is None:
        return f"tracking.backend: {backend} is not installed: pip install 'verticalft[{backend}]'"
    return None


def log_report(recipe: Recipe, run: RunDir, report: Path) -> None:
    """The report and its plots on the pipeline's run (after `verticalft run` / `report` wrote them)."""
    tracker = tracker_for(recipe, run)
    try:
        tracker.artifacts([report, report.parent / "plots"])
    finally:
        tracker.close()


@contextmanager
def stage_environment(env: Mapping[str, str]) -> Iterator[None]:
    """`env` set for the stage (its trainers, in-process or launched, read it), then restored."""
    before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
