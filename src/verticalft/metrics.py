"""The metrics contract: what each stage writes under `metrics` in `manifest.json`, as typed records.

The stages build these records and write `to_dict(record)`; the report, its plots and the stages
that read an earlier stage's figures (cost reads bench, route reads eval and cost) read them back
through `load_run` / `from_dict`, never by string keys. So a key renamed on one side is an
attribute error for mypy and a `MetricsError` naming the stage and key when a manifest is loaded,
instead of a "–" in the report's Decision table.

A field without a default is one its stage always writes: a manifest without it does not load. A
field with a default is written only sometimes (a LoRA parity check, a gate that failed) or was
added after manifests already on disk were written. Records whose producer passes through a
library's own dictionary (vLLM's benchmark result in `BenchPoint`, the recipe's SLO) keep the keys
they do not name in `extra`, written back at the same level, so the manifest keeps every key.
"""

from __future__ import annotations

import dataclasses
import types
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, Union, get_args, get_origin, get_type_hints

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = [
    "ApiComparison",
    "ApiPrice",
    "BenchDevice",
    "BenchMetrics",
    "BenchModel",
    "BenchPoint",
    "Calibration",
    "CalibrationBin",
    "Cascade",
    "CascadePoint",
    "CostAssumptions",
    "CostMetrics",
    "CostModel",
    "CptMetrics",
    "DistillMetrics",
    "DpoMetrics",
    "EvalMetrics",
    "EvalModel",
    "FitRun",
    "FitShape",
    "GeneralEvalRecord",
    "LossPoint",
    "MetricsError",
    "Parity",
    "Retention",
    "RouteItems",
    "RouteMetrics",
    "RunMetrics",
    "Score",
    "SftMetrics",
    "TeacherCache",
    "Spend",
    "StageRecord",
    "StudentMetrics",
    "StudentTraining",
    "TokenSecondsRecord",
    "TrainingMetrics",
    "from_dict",
    "load_run",
    "score_of",
    "to_dict",
    "trained",
]

R = TypeVar("R", bound="DataclassInstance")  # a record class of this module


class MetricsError(ValueError):
    """A manifest whose metrics do not match the contract: names the stage, the key and its path."""


def sometimes(default: Any = None, *, factory: Any = None) -> Any:
    """A field its stage writes only when there is something to say (a failed gate, a LoRA parity
    check): `to_dict` leaves it out while it holds its default, as the stage always did."""
    if factory is not None:
        return field(default_factory=factory, metadata={"sometimes": True})
    return field(default=default, metadata={"sometimes": True})


# ---- scores and training (cpt, sft, dpo, each distilled student)


@dataclass(kw_only=True)
class Score:
    """`scoring.summarise`: accuracy overall, per task and per difficulty."""

    score: float
    n: int | None = None
    by_task: dict[str, float] = field(default_factory=dict)
    by_difficulty: dict[str, float] = field(default_factory=dict)
    examples: list[dict[str, Any]] = sometimes(factory=list)  # the quick eval's first answers


@dataclass(kw_only=True)
class LossPoint:
    step: float
    loss: float


@dataclass(kw_only=True)
class TrainingMetrics:
    """What one trainer run measured (`stages.base.train_and_measure` + peak memory)."""

    loss_curve: list[LossPoint] = field(default_factory=list)  # a trainer that logged no loss: none
    first_loss: float | None
    last_loss: float | None
    tokens_seen: int
    steps: int
    train_seconds: float
    train_loss: float | None = None
    resumed_from: str | None = None
    world_size: int | None = None
    train_steps_per_second: float | None = None
    peak_rss_mb: float | None = None  # added after the report fixture's run


@dataclass(kw_only=True)
class CptMetrics(TrainingMetrics):
    domain_docs: int
    replay_docs: int
    eval_loss_before: float | None  # held-out loss; None without data.heldout
    eval_loss: float | None
    heldout_perplexity_before: float | None
    heldout_perplexity_after: float | None
    eval_before: Score | None  # the domain quick eval of the base (cpt does not score after)
    eval_after: Score | None = sometimes(None)


@dataclass(kw_only=True)
class SftMetrics(TrainingMetrics):
    eval_loss: float | None
    eval_before: Score | None
    eval_after: Score | None
    quantization: str
    train_examples: int


@dataclass(kw_only=True)
class DpoMetrics(TrainingMetrics):
    preference_eval_before: dict[str, float]  # TRL's DPOTrainer.evaluate() metrics
    preference_eval_after: dict[str, float]
    reward_accuracy: float | None
    reward_margin: float | None
    eval_before: Score | None
    eval_after: Score | None


@dataclass(kw_only=True)
class StudentTraining(TrainingMetrics):
    """A student's trainer run; the logit kinds also record their distillation loss."""

    distill_loss_first: float | None = sometimes(None)
    distill_loss_last: float | None = sometimes(None)


@dataclass(kw_only=True)
class PhaseMetrics:
    """One phase of a student's logit distillation (`stages.distill.phases`), as it ran: its data
    and budget, its loss settings, its trainer run and the student's score right after it."""

    name: str
    data: str  # corpus+replay | sft | a source's path (recipe.DistillPhase.label)
    examples: int  # distinct rows: packed document rows or conversations
    tokens: int  # student input tokens trained on: the unit of `max_tokens`
    target_tokens: int  # of which distillation targets (every token of a document, assistant tokens)
    loss: str
    temperature: float
    ce_weight: float
    train: StudentTraining
    eval: Score | None
    score: float | None
    retention: float | None  # vs the teacher's score, after this phase
    retention_by_task: dict[str, float | None] = field(default_factory=dict)


@dataclass(kw_only=True)
class StudentMetrics:
    """`distill.students.student_result` (less its outputs) + where the teacher lived; with
    phases, `eval`, `score`, `retention` and `train` are the last phase's."""

    eval: Score | None
    score: float | None
    retention: float | None  # student score / teacher score
    train: StudentTraining
    peak_rss_mb: float | None
    teacher_in_memory: bool
    phases: list[PhaseMetrics] = sometimes(factory=list)  # logits: every phase, in order
    # with data.eval_rephrased: the final student on it, and its retention vs the teacher's
    eval_rephrased: Score | None = sometimes(None)
    retention_rephrased: float | None = sometimes(None)


@dataclass(kw_only=True)
class TeacherCache:
    """The teacher's top-k log-prob cache (distill/cache.py), built once for every student."""

    k: int
    tokens: int
    bytes_per_token: float
    build_seconds: float  # 0: reused
    path: str
    examples: int | None = None  # added after the report fixture's run
    build_peak_rss_mb: float | None = None


@dataclass(kw_only=True)
class DistillMetrics:
    kind: str
    teacher: str
    teacher_eval: Score | None
    students: dict[str, StudentMetrics] = field(default_factory=dict)
    teacher_eval_rephrased: Score | None = sometimes(None)  # with data.eval_rephrased
    vocab_preflight: Any
    failed_students: dict[str, str] = sometimes(factory=dict)
    pruning: dict[str, Any] = sometimes(factory=dict)
    # logits with `cache: true`: one cache per phase data (recipe.DistillPhase.label); runs from
    # before phases wrote `cache` (the SFT conversations' one), still read
    caches: dict[str, TeacherCache] = sometimes(factory=dict)
    cache: TeacherCache | None = sometimes(None)
    generations: dict[str, Any] | None = sometimes(None)  # sequence: the teacher answers kept and dropped


# ---- eval


@dataclass(kw_only=True)
class Retention:
    overall: float | None  # None where the teacher scored 0
    by_task: dict[str, float | None] = field(default_factory=dict)


@dataclass(kw_only=True)
class EvalModel:
    role: str  # base | teacher | student
    path: str
    domain: Score
    general: Score | None = sometimes(None)
    retention: Retention | None = sometimes(None)  # students and quantized variants: vs the final teacher
    general_retention: float | None = sometimes(None)  # vs the base on the general set (forgetting)
    quantization: str | None = sometimes(None)  # a quantized variant (stages.export.schemes) …
    quantized_from: str | None = sometimes(None)  # … of this model
    lm_eval: dict[str, float] | None = sometimes(None)  # stages.eval.general: task → its metric


@dataclass(kw_only=True)
class GeneralEvalRecord:
    """How the lm-eval tasks were run (stages.eval.general): the command line per model."""

    backend: str  # lm-eval's model type: hf | vllm
    tasks: list[str]
    metric: str
    limit: int | None
    samples: dict[str, int]  # task → items scored
    commands: dict[str, str]  # model → the lm-eval command line it ran (shell-quoted)
    seconds: dict[str, float]  # model → wall time of its lm-eval run


@dataclass(kw_only=True)
class EvalMetrics:
    backend: str
    max_new_tokens: int
    items: dict[str, int]  # per set (domain, general): items scored
    teacher: str | None  # the final teacher's name
    models: dict[str, EvalModel]
    general_eval: GeneralEvalRecord | None = sometimes(None)
    gates_failed: list[str] = sometimes(factory=list)


# ---- bench


@dataclass(kw_only=True)
class BenchDevice:
    kind: str  # gpu | cpu
    name: str
    count: int
    memory_gb: float | None = None


@dataclass(kw_only=True)
class BenchPoint:
    """One sweep point: `serving.benchmark.combine_repeats` over vLLM's result files. The fields
    read here are named; every other figure vLLM reports stays in `extra`."""

    max_concurrency: int
    duration: float | None
    output_throughput: float | None
    input_throughput: float | None
    median_e2el_ms: float | None
    p99_e2el_ms: float | None
    median_ttft_ms: float | None
    p99_ttft_ms: float | None
    meets_slo: bool | None
    unstable: bool = False
    decode_tpot_ms: float | None = None  # per-token chunks only (serving.benchmark.decode_tpot)
    tpot_method: str | None = None
    num_prompts: int | None = None
    sizing: dict[str, Any] | None = None  # the run that resized a point too short to repeat well
    repeats: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(kw_only=True)
class FitRun:
    input_len: int
    output_len: int
    duration: float | None
    total_input_tokens: int | None
    total_output_tokens: int | None


@dataclass(kw_only=True)
class Parity:
    prompts: int
    identical: int
    match_rate: float | None
    mismatches: list[dict[str, Any]] = field(default_factory=list)


@dataclass(kw_only=True)
class BenchModel:
    served_as: str
    model: str
    base_model: str | None
    adapter: str | None
    weight_bytes: int
    gpus: int
    sweep: list[BenchPoint]
    operating_concurrency: int | None  # the highest concurrency meeting the SLO
    fit_point: BenchPoint | None
    fit_runs: list[FitRun]
    shared_server_with: list[str] = field(default_factory=list)
    parity: Parity | None = sometimes(None)


@dataclass(kw_only=True)
class FitShape:
    input_len: int
    output_len: int


@dataclass(kw_only=True)
class BenchMetrics:
    device: BenchDevice | None = None  # what the throughput was measured on (older runs: not said)
    concurrency: list[int]
    input_len: int
    output_len: int
    fit_shape: FitShape | None
    slo: dict[str, Any]  # recipe stages.bench.slo: <metric>_ms bounds, min_attainment
    models: dict[str, BenchModel]
    repeats: int | None = None
    min_seconds: float | None = None  # added after the report fixture's run
    served_merged_because: dict[str, str] = field(default_factory=dict)


# ---- cost


@dataclass(kw_only=True)
class TokenSecondsRecord:
    input_s: float
    output_s: float
    clamped: str | None = None


@dataclass(kw_only=True)
class ApiComparison:
    api_usd_per_m: float
    api_monthly_usd: float
    monthly_savings_usd: float
    payback_months: float | None  # None: the savings never repay the spend
    break_even_daily_tokens: int | None  # None: the API is cheaper at any volume
    effective_ratio: float | None
    saturated_ratio: float


@dataclass(kw_only=True)
class CostModel:
    """One served model priced (`stages.cost.price_model`)."""

    priced_at_concurrency: int
    slo_met: bool | None  # None: no point's SLO could be checked
    gpus: int
    token_seconds: TokenSecondsRecord | None
    priced_mix: float
    mix_note: str | None  # why the recipe's mix could not be priced
    input_usd_per_m: float | None
    output_usd_per_m: float | None
    capacity_tokens_per_s: float
    saturated_usd_per_m: float
    effective_usd_per_m: float | None  # None: no volume to spread the bill over
    replicas: int
    replica_monthly_usd: float
    self_hosted_monthly_usd: float
    unstable_points: list[int]
    output_tokens_per_s: float
    p50_e2el_ms: float | None
    p99_e2el_ms: float | None
    p50_ttft_ms: float | None
    p99_ttft_ms: float | None
    compare: dict[str, ApiComparison]
    decode_floor_ms: float
    measured_tpot_ms_at_1: float | None
    bandwidth_utilisation: float | None
    tpot_method_at_1: str | None = None  # added after the report fixture's run


@dataclass(kw_only=True)
class ApiPrice:
    model: str
    input_usd_per_m: float
    output_usd_per_m: float
    as_of: str | None = None
    source: str | None = None


@dataclass(kw_only=True)
class CostAssumptions:
    serve_gpu: str
    serve_usd_per_gpu_hour: float
    serve_gpu_bandwidth_tb_per_s: float
    serve_gpu_peak_tflops: float
    gpus_per_replica: dict[str, int]
    bench_device: BenchDevice | None
    throughput_scale: float | None
    train_gpu: str
    train_usd_per_gpu_hour: float
    training_gpus: int
    mfu: dict[str, float]
    daily_tokens: float
    input_fraction: float
    peak_to_average: float
    hours_per_month: float
    other_upfront_usd: float
    api_prices: dict[str, ApiPrice]
    note: str


@dataclass(kw_only=True)
class Spend:
    wall_time_s: float
    attempts: int
    failed_or_killed: int
    gpus: int
    usd_per_gpu_hour: float
    usd: float
    planned_usd: float | None
    of_which_cache_build_s: float | None = sometimes(None)  # distill: the teacher cache's share


@dataclass(kw_only=True)
class CostMetrics:
    assumptions: CostAssumptions
    spend: dict[str, Spend]
    upfront_usd: float
    models: dict[str, CostModel]


# ---- route


@dataclass(kw_only=True)
class CascadePoint:
    thresholds: list[float | None]  # None: the tier never answers (∞)
    quality: float
    shares: list[float]
    usd_per_m: float | None


@dataclass(kw_only=True)
class Cascade:
    tiers: list[str]
    target: dict[str, float]
    target_quality_on_pick_half: float | None
    target_met_on_pick_half: bool
    chosen_on_pick_half: CascadePoint
    chosen: CascadePoint
    sentence: str
    last_tier_alone: CascadePoint
    frontier: list[CascadePoint]
    points: list[CascadePoint]


@dataclass(kw_only=True)
class CalibrationBin:
    """One bin of `routing.expected_calibration_error`'s reliability diagram."""

    lo: float
    hi: float
    items: int
    accuracy: float
    confidence: float


@dataclass(kw_only=True)
class Calibration:
    ece: float | None
    bins: list[CalibrationBin]


@dataclass(kw_only=True)
class RouteItems:
    pick: int
    report: int


@dataclass(kw_only=True)
class RouteMetrics:
    items: RouteItems
    daily_tokens: float
    singles: dict[str, CascadePoint]
    cascades: dict[str, Cascade]
    calibration: dict[str, Calibration]


# ---- the run


@dataclass(kw_only=True)
class StageRecord:
    """A stage's entry in the manifest, as the report's stage table shows it; `metrics` stays a
    plain dict for the stages without a record here (tiny_models, curate: `registry.report_notes`)."""

    status: str | None = None
    wall_time_s: float | None = None
    outputs: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(kw_only=True)
class RunMetrics:
    """Everything the report and plots read, loaded once from a manifest (`load_run`)."""

    stage_order: list[str]  # every stage in the manifest, in run order
    stages: dict[str, StageRecord]
    cpt: CptMetrics | None = None
    sft: SftMetrics | None = None
    dpo: DpoMetrics | None = None
    distill: DistillMetrics | None = None
    eval: EvalMetrics | None = None
    bench: BenchMetrics | None = None
    cost: CostMetrics | None = None
    route: RouteMetrics | None = None

    def training(self, stage: str) -> CptMetrics | SftMetrics | DpoMetrics | None:
        """The training record of cpt / sft / dpo (None for any other stage or one not run)."""
        return {"cpt": self.cpt, "sft": self.sft, "dpo": self.dpo}.get(stage)

    @property
    def cpu(self) -> bool:
        """Serving was measured on CPU: every $ and latency figure must say so."""
        return self.cost is not None and self.cost.assumptions.serve_gpu == "cpu"


RECORDS: dict[str, type] = {
    "cpt": CptMetrics,
    "sft": SftMetrics,
    "dpo": DpoMetrics,
    "distill": DistillMetrics,
    "eval": EvalMetrics,
    "bench": BenchMetrics,
    "cost": CostMetrics,
    "route": RouteMetrics,
}

# Keys renamed in a stage, old → new, read from manifests written before the rename. cpt wrote
# `eval_base` until the rename to `eval_before` (like every other stage); the fallback is kept for
# one release so that runs on disk still render, then removed.
RENAMED: dict[str, dict[str, str]] = {"cpt": {"eval_base": "eval_before"}}


def load_run(manifest: dict[str, Any]) -> RunMetrics:
    """The run's metrics from a manifest (`RunDir.manifest()`): every stage that wrote metrics is
    checked against its record; a stage that did not run or wrote none (it failed) is None."""
    raw_stages = manifest.get("stages") or {}
    listed = [s for s in manifest.get("stage_order") or [] if s in raw_stages]
    order = listed + [s for s in raw_stages if s not in listed]
    stages = {name: _stage_record(name, raw_stages[name] or {}) for name in order}
    typed: dict[str, Any] = {
        name: from_dict(cls, _renamed(name, stages[name].metrics), f"stages.{name}.metrics")
        for name, cls in RECORDS.items()
        if name in stages and stages[name].metrics
    }
    return RunMetrics(stage_order=order, stages=stages, **typed)


def _stage_record(name: str, raw: dict[str, Any]) -> StageRecord:
    return StageRecord(
        status=raw.get("status"),
        wall_time_s=raw.get("wall_time_s"),
        outputs=raw.get("outputs") or {},
        metrics=raw.get("metrics") or {},
    )


def _renamed(stage: str, metrics: dict[str, Any]) -> dict[str, Any]:
    renames = {
        old: new for old, new in RENAMED.get(stage, {}).items() if old in metrics and new not in metrics
    }
    return {renames.get(k, k): v for k, v in metrics.items()}


def from_dict(cls: type[R], data: Any, where: str = "metrics", *, strict: bool = False) -> R:
    """`data` (a manifest dict) as a `cls` record, nested records included; a key the record needs
    and `data` lacks is a `MetricsError` naming `where` (the key path) and the keys it has.

    `strict` (a stage checking what it is about to write): a key the record does not name is an
    error too, so a figure is never dropped from the manifest unnoticed. Reading a manifest is
    not strict: keys an older toolkit wrote are ignored."""
    if not isinstance(data, dict):
        raise MetricsError(f"{where}: expected an object ({cls.__name__}), got {type(data).__name__}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if strict and unknown and "extra" not in names:
        raise MetricsError(f"{where}: {', '.join(unknown)} not in {cls.__name__} (verticalft.metrics)")
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name == "extra":
            values["extra"] = {k: v for k, v in data.items() if k not in names}
        elif f.name in data:
            values[f.name] = _convert(hints[f.name], data[f.name], f"{where}.{f.name}", strict)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise MetricsError(
                f"{where}: no '{f.name}' ({cls.__name__} needs it); has: {', '.join(sorted(data)) or 'nothing'}"
            )
    return cls(**values)


def _convert(hint: Any, value: Any, where: str, strict: bool) -> Any:
    """`value` read as `hint`: records, and lists / dicts / optionals of them; anything else as is."""
    if value is None:
        return None
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        inner = [a for a in get_args(hint) if a is not type(None)]
        return _convert(inner[0], value, where, strict) if len(inner) == 1 else value
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return from_dict(hint, value, where, strict=strict)
    if origin is list and isinstance(value, list):
        (item,) = get_args(hint)
        return [_convert(item, v, f"{where}[{i}]", strict) for i, v in enumerate(value)]
    if origin is dict and isinstance(value, dict):
        _, item = get_args(hint)
        return {k: _convert(item, v, f"{where}.{k}", strict) for k, v in value.items()}
    return value


def trained(metrics: dict[str, Any], where: str) -> dict[str, Any]:
    """A trainer run's figures (`stages.training.Trained.metrics`) as the keyword arguments of a
    stage's record (`CptMetrics(**trained(done.metrics, "cpt"), domain_docs=…)`), checked strictly."""
    return vars(from_dict(TrainingMetrics, metrics, f"stages.{where}.metrics", strict=True))


def score_of(summary: dict[str, Any] | None) -> Score | None:
    """A quick eval's summary (`scoring.summarise`, None where it did not run) as a `Score`."""
    return None if summary is None else from_dict(Score, summary, "score", strict=True)


def to_dict(record: Any) -> Any:
    """A record as the manifest stores it (`extra` written back beside the named fields)."""
    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(record):
            value = getattr(record, f.name)
            if f.metadata.get("sometimes") and value == (
                f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
            ):
                continue
            if f.name == "extra":
                out.update(to_dict(value))
            else:
                out[f.name] = to_dict(value)
        return out
    if isinstance(record, dict):
        return {k: to_dict(v) for k, v in record.items()}
    if isinstance(record, list | tuple):
        return [to_dict(v) for v in record]
    return record
