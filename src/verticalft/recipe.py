"""The recipe: one YAML per vertical, validated strictly before any work runs.

Why so strict: a typo in a 3-hour training config should cost the user one second, not
three hours. Every block forbids unknown keys, and `load_recipe` reports *every* problem at
once with its dotted key path and a did-you-mean hint (`RecipeError`), so the CLI can print
them all and exit 2 without a traceback.

Loading order: recipe YAML → shared profile overlay (`<recipe folder>/profiles/<profile>.yaml`,
else `recipes/profiles/<profile>.yaml` of the current directory) → the recipe's own
`profiles.<profile>` block on top → command-line overrides (`key.path=value`).
`{name}` in any string of an overlay is replaced by the recipe's name, so one shared
`tiny` profile can point every vertical at its own sample data.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    create_model,
    model_serializer,
    model_validator,
)
from pydantic.fields import FieldInfo

from verticalft.curation.filters import FILTERS
from verticalft.formats import ColumnKey, FormatName
from verticalft.schema import Strict

PROFILE_DIR_NAME = "profiles"


def as_number(value: Any) -> Any:
    """YAML 1.1 reads `2e-4` as a string; where a number is meant, make it one."""
    if isinstance(value, str):
        try:
            return int(value) if value.lstrip("-").isdigit() else float(value)
        except ValueError:
            return value
    return value


def _coerce_numbers(block: dict[str, Any]) -> dict[str, Any]:
    return {key: as_number(value) for key, value in block.items()}


TrainerBlock = Annotated[dict[str, Any], AfterValidator(_coerce_numbers)]


# --------------------------------------------------------------------------- data
HF_ONLY = ("config", "revision", "data_files", "streaming")  # Source keys only `hf://` sources use


class Source(Strict):
    """One data file (jsonl/json/parquet/csv, also .jsonl.gz/.json.gz), a folder (Parquet shards, a
    `Dataset.save_to_disk` folder, or .txt/.html pages for curation), or a Hugging Face dataset
    (`hf://name`, or `hf://<local folder>` as `datasets.load_dataset` reads it)."""

    path: str = Field(description="a file, a folder, or `hf://<dataset>`")
    license: str = Field(
        default="unknown", description="declared licence; a record's own `license` field overrides it"
    )
    split: str = Field(
        default="train", description="also picks the split of a save_to_disk DatasetDict folder"
    )
    text_field: str = Field(default="text", description="the field holding a document's text")
    id_field: str = Field(default="id", description="rows without one get `<file stem>:<line>`")
    tokens: float | None = Field(
        default=None,
        ge=0,
        description="declared size, used by `plan` when the file is not on this machine (e.g. a 2T-token corpus)",
    )
    format: FormatName = Field(
        default="auto",
        description="SFT/preference sets: the row format; `auto` picks per row by the fields present",
    )
    # LLaMA-Factory dataset_info.json style.
    columns: dict[ColumnKey, str] = Field(
        default_factory=dict,
        description="the toolkit's field names → this file's, e.g. {messages: conversations} or "
        "{prompt: instruction, query: input, response: output}",
    )
    # `hf://` only, passed to `datasets.load_dataset`.
    config: str | None = Field(
        default=None, description="`hf://` only: the subset (`name=`, e.g. `all` for cais/mmlu)"
    )
    revision: str | None = Field(default=None, description="`hf://` only: a branch, tag or commit to pin")
    data_files: str | list[str] | dict[str, str | list[str]] | None = Field(
        default=None, description="`hf://` only: which data files to read"
    )
    streaming: bool = Field(
        default=False,
        description="`hf://` only: read row by row (curate streams the corpus into its shards; nothing is "
        "downloaded whole)",
    )

    @model_validator(mode="after")
    def _hf_options_for_hf(self) -> Source:
        given = [k for k in HF_ONLY if k in self.model_fields_set and getattr(self, k) not in (None, False)]
        if given and not self.path.startswith("hf://"):
            raise ValueError(f"{', '.join(given)}: only for hf:// sources (path is {self.path})")
        return self


class SetSource(Source):
    """A source of the SFT or preference set (a set takes one or a list of them)."""

    # data.weighted_rows: the whole part repeats rows exactly, as epochs of that source would, and
    # the fraction samples without replacement, so no row appears more than ceil(weight) times and
    # reruns pick the same.
    weight: float = Field(
        default=1.0,
        gt=0.0,
        description="a multiplier on this source's rows: 2 = every row twice, 0.5 = a seeded half "
        "(compute.seed), 2.5 = twice plus a seeded half",
    )


def _one_or_many(value: Any) -> Any:
    """A set given as one mapping (every recipe before sets took lists) is a list of one."""
    return [value] if isinstance(value, dict) else value


SetSources = Annotated[Annotated[list[SetSource], Field(min_length=1)] | None, BeforeValidator(_one_or_many)]


class Replay(Source):
    """General text mixed into CPT so the model keeps what it knew."""

    ratio: float = Field(
        default=0.1, ge=0.0, lt=1.0, description="share of the CPT tokens taken from this source"
    )


class Data(Strict):
    """Every data source of the run."""

    corpus: list[Source] = Field(default_factory=list, description="raw domain text for curation and CPT")
    replay: Replay | None = None
    heldout: Source | None = Field(
        default=None, description="domain text held out of CPT, for perplexity before/after"
    )
    # One source or a list (each with its `weight`), in any supported format (formats.py).
    sft: SetSources = Field(default=None, description="chat `messages`: one source or a list of them")
    preferences: SetSources = Field(
        default=None, description="prompt / chosen / rejected: one source or a list of them"
    )
    eval: Source | None = Field(default=None, description="prompt / answer / task / kind / difficulty")
    eval_rephrased: Source | None = Field(
        default=None,
        description="the eval's tasks asked in words unlike the training data's (same format): distill "
        "reports each student's retention on it too, so a student that learned the phrasing shows up",
    )
    general_eval: Source | None = Field(
        default=None,
        description="general-capability set in the eval format (e.g. a slice of MMLU as `choice` items): "
        "every model is scored on it so forgetting from CPT/SFT shows up",
    )


# --------------------------------------------------------------------------- models
def _chat_template_choice(choice: str | None) -> str | None:
    from verticalft.chat_templates import choice_problem

    problem = choice_problem(choice)
    if problem:
        raise ValueError(problem)
    return choice


def _template_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    from verticalft.chat_templates import kwargs_problem

    problem = kwargs_problem(kwargs)
    if problem:
        raise ValueError(problem)
    return kwargs


class Models(Strict):
    """The base/teacher model and the students distilled from it."""

    teacher: str = Field(description="HF id, local path, `*.gguf`, `pkg://…` or `tiny://teacher`")
    students: list[str] = Field(
        default_factory=list, description="model references as for the teacher, or `prune://teacher?layers=N`"
    )
    trust_remote_code: bool = False
    # Used by every stage and by vLLM (chat_templates.py), in its training variant
    # ({% generation %} around assistant turns).
    chat_template: Annotated[str | None, AfterValidator(_chat_template_choice)] = Field(
        default=None,
        description="the run's chat template: null / `model` = the model's own; a TRL training template "
        "name (qwen2_5, qwen3, llama3, …), `chatml`; or a path to a .jinja file",
    )
    # HF apply_chat_template, TRL's trainers, vLLM offline and served (chat_templates.py: render
    # variables).
    chat_template_kwargs: Annotated[dict[str, Any], AfterValidator(_template_kwargs)] = Field(
        default_factory=dict,
        description="variables for every render of that template, e.g. {enable_thinking: false} for Qwen3, "
        "whose template otherwise lets the model think first and the eval score the think block",
    )

    def tiny_refs(self) -> list[str]:
        """The `tiny://` models among the teacher and students: the tiny_models stage builds them."""
        from verticalft.models import is_tiny

        return [ref for ref in (self.teacher, *self.students) if is_tiny(ref)]


class TinyModels(Strict):
    """How `tiny://` models are built (see models.build_tiny_models)."""

    seed: int = 0
    vocab_size: int = Field(default=2048, ge=300)
    specs: dict[str, TinySpec] = Field(default_factory=dict)


class TinySpec(Strict):
    """The shape of one `tiny://<name>` Llama."""

    hidden_size: int = Field(ge=64)
    num_hidden_layers: int = Field(ge=1)
    intermediate_size: int = Field(ge=64)
    num_key_value_heads: int | None = Field(default=None, description="default: as many as attention heads")


# --------------------------------------------------------------------------- stages
class Lora(Strict):
    """PEFT LoRA settings."""

    r: int = Field(default=16, ge=1, description="LoRA rank")
    alpha: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    modules_to_save: list[str] = Field(
        default_factory=list,
        description="whole modules trained and saved next to the adapter (PEFT's `modules_to_save`), e.g. "
        "[embed_tokens, lm_head] when the base never saw the chat format",
    )
    # PEFT trainable tokens: a base model may never have seen <|user|>/<|assistant|>-style tokens.
    train_chat_tokens: bool = Field(
        default=True, description="train the embedding rows of the chat template's special tokens"
    )


class LaunchedStage(Strict):
    """A training stage that runs under `compute.launcher`."""

    # Full-parameter CPT of a 32B model needs sharding (fsdp2); QLoRA fits one GPU per rank and is
    # best served by plain data parallelism (ddp).
    accelerate_config: str | None = Field(
        default=None,
        description="this stage's accelerate config: ddp | fsdp2 | deepspeed-zero3 | a path "
        "(default: compute.accelerate_config)",
    )


class CptStage(LaunchedStage):
    """Continued pretraining of the teacher on the curated corpus (+ replay)."""

    method: Literal["full", "lora"] = "full"
    lora: Lora = Field(default_factory=Lora)
    max_length: int = Field(default=2048, ge=16, description="tokens per packed training row")
    trainer: TrainerBlock = Field(
        default_factory=dict,
        description="TrainingArguments / TRL config keys, passed through (validate checks them)",
    )


class SftStage(LaunchedStage):
    """Supervised fine-tuning (QLoRA by default) on the curated SFT set, assistant tokens only."""

    quantization: Literal["nf4", "fp4", "none"] = Field(
        default="nf4", description="4-bit base (bitsandbytes) or none"
    )
    lora: Lora = Field(default_factory=Lora)
    packing: bool = True
    max_length: int = Field(default=2048, ge=16)
    merge: bool = Field(
        default=True, description="merge the adapter into a full model folder for later stages"
    )
    trainer: TrainerBlock = Field(
        default_factory=dict,
        description="TrainingArguments / TRL config keys, passed through (validate checks them)",
    )


class DpoStage(LaunchedStage):
    """Preference optimisation (TRL DPO) on the curated preference set."""

    beta: float = Field(default=0.1, gt=0.0, description="DPO's KL weight against the reference model")
    quantization: Literal["nf4", "fp4", "none"] = "none"
    lora: Lora = Field(default_factory=Lora)
    max_length: int = Field(default=1024, ge=16)
    merge: bool = True
    eval_fraction: float = Field(
        default=0.1, gt=0.0, lt=1.0, description="share of the pairs held out for reward accuracy"
    )
    trainer: TrainerBlock = Field(
        default_factory=dict,
        description="TrainingArguments / TRL config keys, passed through (validate checks them)",
    )


class DistillTeacher(Strict):
    """Where the teacher's outputs come from."""

    model: str | None = Field(
        default=None, description="default: the run's newest model (dpo → sft → cpt), else models.teacher"
    )
    quantization: Literal["nf4", "fp4", "none"] = Field(
        default="none", description="load the teacher 4-bit (bitsandbytes)"
    )
    # `sequence` only: an OpenAI-compatible endpoint (a vLLM server, a hosted API) as the teacher.
    endpoint: str | None = Field(
        default=None,
        description="`sequence` only: base URL of an OpenAI-compatible teacher, e.g. http://127.0.0.1:8000/v1",
    )
    endpoint_model: str | None = Field(default=None, description="the model name the endpoint serves")
    api_key_env: str | None = Field(
        default=None, description="name of the environment variable holding the endpoint's API key"
    )


class TeacherGeneration(Strict):
    """`sequence`: how the teacher writes the responses the student learns from."""

    backend: Literal["auto", "vllm", "hf", "openai"] = Field(
        default="auto", description="auto: vLLM when installed, else transformers"
    )
    max_new_tokens: int = Field(default=256, ge=1)
    temperature: float = Field(default=0.0, ge=0.0, description="0: greedy")
    batch_size: int = Field(default=32, ge=1)


PhaseData = Literal["corpus", "replay", "sft"]


def _phase_data(value: Any) -> Any:
    """A phase's data as a list (one name alone is a list of one); a name that is none of the
    three is said plainly, before pydantic's union error would name its internal branches."""
    items = [value] if isinstance(value, (dict, str)) else value
    for item in items if isinstance(items, list) else []:
        if isinstance(item, str) and item not in ("corpus", "replay", "sft"):
            raise ValueError(f"'{item}' is not corpus, replay or sft (a text source is {{path, license}})")
    return items


class DistillPhase(Strict):
    """One phase of a student's distillation: its data, its budget and its loss settings.

    Minitron's order for a pruned student: first heal it on general/domain text (logit KD over
    packed documents, every token a target), then distil on the task's conversations. The phases
    run in order, each starting from the model the previous one saved, each scored after it."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", description="folder name: distill/<student>/<name>/")
    data: Annotated[list[PhaseData | Source], Field(min_length=1), BeforeValidator(_phase_data)] = Field(
        description="corpus (curated when curate ran), replay (mixed at data.replay.ratio), sft, or a "
        "text source {path, license}; documents are packed into max_length rows"
    )
    max_tokens: float | None = Field(
        default=None,
        gt=0,
        description="student training tokens (input tokens) of this phase: the data is cycled up to it; "
        "default: the trainer block's schedule",
    )
    max_steps: int | None = Field(default=None, ge=1, description="optimizer steps instead of max_tokens")
    loss: Literal["forward_kl", "reverse_kl", "jsd", "tv"] | None = Field(
        default=None, description="default: stages.distill.loss"
    )
    beta: float | None = Field(default=None, ge=0.0, le=1.0, description="default: stages.distill.beta")
    temperature: float | None = Field(default=None, gt=0.0, description="default: stages.distill.temperature")
    ce_weight: float | None = Field(
        default=None, ge=0.0, le=1.0, description="default: stages.distill.ce_weight"
    )
    trainer: TrainerBlock = Field(
        default_factory=dict,
        description="keys over stages.distill.trainer for this phase (e.g. learning_rate)",
    )

    @property
    def label(self) -> str:
        """What the phase reads, in a word: `corpus+replay`, `sft`, or a source's path."""
        return "+".join(d if isinstance(d, str) else d.path for d in self.data)

    @property
    def reads_conversations(self) -> bool:
        return self.data == ["sft"]

    def trainer_overrides(self) -> dict[str, Any]:
        """The phase's own trainer keys over the stage's block, then its budget: a token budget is
        one pass over its rows (distill.phases.budget_rows cycles them), a step budget `max_steps`."""
        keys = dict(self.trainer)
        if self.max_tokens is not None:
            keys.update(num_train_epochs=1, max_steps=-1)
        elif self.max_steps is not None:
            keys["max_steps"] = self.max_steps
        return keys

    @model_validator(mode="after")
    def _one_budget_one_kind(self) -> DistillPhase:
        if self.max_tokens is not None and self.max_steps is not None:
            raise ValueError("give max_tokens or max_steps, not both")
        if "sft" in self.data and len(self.data) > 1:
            raise ValueError(
                "a phase reads conversations (sft) or documents (corpus, replay, sources), not both"
            )
        return self


class DistillStage(LaunchedStage):
    """Teacher → students: on teacher-written answers (sequence), on its logits, or on-policy."""

    kind: Literal["sequence", "logits", "on_policy"] = "logits"
    loss: Literal["forward_kl", "reverse_kl", "jsd", "tv"] = "forward_kl"
    beta: float = Field(default=0.5, ge=0.0, le=1.0, description="jsd: weight of the teacher in the mixture")
    temperature: float = Field(default=2.0, gt=0.0, description="applied to both distributions, loss × T²")
    ce_weight: float = Field(default=0.5, ge=0.0, le=1.0, description="mix of plain cross-entropy on labels")
    cache: bool = Field(
        default=True,
        description="logits: keep the teacher's top-k per token on disk and train without the teacher loaded",
    )
    top_k: int = Field(default=64, ge=1, description="teacher logits kept per token in the cache")
    students: list[str] | None = Field(default=None, description="default: models.students")
    max_examples: int | None = Field(default=None, ge=1, description="first N SFT conversations / prompts")
    method: Literal["full", "lora", "qlora"] = Field(default="qlora", description="how each student trains")
    lora: Lora = Field(default_factory=Lora)
    max_length: int = Field(default=2048, ge=16)
    phases: list[DistillPhase] | None = Field(
        default=None,
        description="logits: ordered phases for every student (the other kinds train on sft alone); "
        "default: a prune:// student heals on corpus (+ replay) then trains on sft, any other on sft",
    )
    teacher: DistillTeacher = Field(default_factory=DistillTeacher)
    generation: TeacherGeneration = Field(default_factory=TeacherGeneration)
    trainer: TrainerBlock = Field(
        default_factory=dict,
        description="TrainingArguments / TRL config keys, passed through (validate checks them)",
    )

    def phases_for(self, ref: str, *, has_corpus: bool, has_replay: bool) -> list[DistillPhase]:
        """A student's phases: the recipe's; else, for a pruned student with a corpus, `heal`
        (corpus + replay, the trainer block's schedule) then `task` (sft); else the one phase
        every kind had before phases."""
        from verticalft.pruning import is_prune

        task = DistillPhase(name="task", data=["sft"])
        if self.kind != "logits":  # phases are logit distillation's (the stage says it ignores them)
            return [task]
        if self.phases:
            return list(self.phases)
        if is_prune(ref) and has_corpus:
            heal = DistillPhase(name="heal", data=["corpus", "replay"] if has_replay else ["corpus"])
            return [heal, task]
        return [task]

    def phase_settings(self, phase: DistillPhase) -> dict[str, Any]:
        """The phase's loss settings, the stage's where the phase leaves one unset."""
        return {
            "loss": phase.loss or self.loss,
            "temperature": phase.temperature if phase.temperature is not None else self.temperature,
            "beta": phase.beta if phase.beta is not None else self.beta,
            "ce_weight": phase.ce_weight if phase.ce_weight is not None else self.ce_weight,
        }

    def input_key(self, phase: DistillPhase) -> str:
        """Which rows and which teacher cache a phase needs, as a name: phases (of any student)
        with the same key share both. Documents are read up to the phase's token budget only, so
        the budget is part of the key; the cache holds log-probs at the phase's temperature."""
        key = phase.label
        if not phase.reads_conversations and phase.max_tokens is not None:
            key += f" ({phase.max_tokens:.3g} tokens)"
        temperature = self.phase_settings(phase)["temperature"]
        return key if temperature == self.temperature else f"{key} T={temperature:g}"

    @model_validator(mode="after")
    def _kind_fits(self) -> DistillStage:
        if self.kind == "on_policy" and self.loss == "tv":
            raise ValueError(
                "on_policy uses TRL's generalized JSD: loss must be forward_kl, reverse_kl or jsd"
            )
        names = [p.name for p in self.phases or []]
        if len(set(names)) != len(names):
            raise ValueError(f"phases: names must differ ({', '.join(names)})")
        if self.teacher.endpoint and self.kind != "sequence":
            raise ValueError(
                "an endpoint teacher returns text, not logits: use kind: sequence (or drop teacher.endpoint)"
            )
        return self


# --------------------------------------------------------------------------- curate
class _OneFilter(Strict):
    """One document filter; exactly one key, e.g. `- gopher_quality: {preset: structured}`. The
    keys and their blocks come from the filter registry (`curation.filters.FILTERS`)."""

    @model_validator(mode="after")
    def _exactly_one(self) -> _OneFilter:
        if len(self.model_fields_set) != 1:
            raise ValueError(
                f"give exactly one filter per list item, one of: {', '.join(type(self).model_fields)}"
            )
        return self

    @model_serializer(mode="wrap")
    def _only_the_set_filter(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Dump `{gopher_quality: {...}}`, not every filter key with None beside it: the resolved
        # recipe is read back by launched workers and must validate again.
        return {k: v for k, v in handler(self).items() if k in self.model_fields_set}

    @property
    def name(self) -> str:
        return next(iter(self.model_fields_set))

    @property
    def config(self) -> BaseModel:
        return getattr(self, self.name)


if TYPE_CHECKING:  # its fields (one per filter of the registry) exist only once FILTERS is built
    FilterStep = _OneFilter
else:
    FilterStep = create_model(
        "FilterStep",
        __base__=_OneFilter,
        __doc__=_OneFilter.__doc__,
        **{n: (f.config | None, None) for n, f in FILTERS.items()},
    )


class NearDedup(Strict):
    """MinHash LSH near-duplicate removal."""

    threshold: float = Field(default=0.8, gt=0.0, lt=1.0, description="Jaccard similarity of a duplicate")
    num_perm: int = Field(default=128, ge=16, description="MinHash permutations")
    ngram: int = Field(default=5, ge=1, description="words per shingle")
    verify: bool = Field(default=True, description="check candidate pairs' true Jaccard")


class Dedup(Strict):
    exact: bool = Field(default=True, description="drop documents whose normalised text repeats")
    near: NearDedup | None = Field(default_factory=NearDedup, description="null: no near-dedup")


class Decontaminate(Strict):
    """Training text that overlaps the eval sets."""

    ngram: int = Field(default=13, ge=1, description="words per n-gram")
    min_overlap: float = Field(default=0.5, ge=0.0, le=1.0, description="share of an eval item's n-grams")
    # Such n-grams are the domain's standard wording (a clause template, a filing heading), not a
    # leaked item.
    max_train_docs: int | None = Field(
        default=10,
        ge=1,
        description="n-grams found in more training documents than this do not count as evidence",
    )
    corpus: Literal["drop", "flag", "off"] = "drop"
    sft: Literal["drop", "flag", "off"] = "drop"
    preferences: Literal["drop", "flag", "off"] = "drop"


class RecordFilters(Strict):
    """Rules for the SFT and preference records."""

    dedup_prompt: bool = Field(default=True, description="keep one record per prompt")
    min_response_chars: int = Field(default=1, ge=0)
    max_prompt_chars: int | None = Field(default=32_000, ge=1)
    max_response_chars: int | None = Field(default=32_000, ge=1)


class CurateStage(Strict):
    """Document filters, PII redaction, dedup and decontamination over sharded data."""

    executor: Literal["local", "ray"] = "local"
    num_workers: int | None = Field(default=None, ge=1, description="default: every core")
    shard_size: int = Field(default=5_000, ge=1, description="documents per shard (the unit of resume)")
    filters: list[FilterStep] = Field(
        default_factory=list, description="document filters in order, one key per item"
    )
    pii: bool = Field(
        default=True, description="redact e-mails, phones, IPs, cards, IBANs, SSNs, account numbers"
    )
    dedup: Dedup = Field(default_factory=Dedup)
    decontaminate: Decontaminate = Field(default_factory=Decontaminate)
    records: RecordFilters = Field(default_factory=RecordFilters)
    max_dropped_per_reason: int | None = Field(
        default=None, ge=0, description="dropped documents kept per reason for the audit; null: all"
    )


class Gates(Strict):
    """Quality floors that fail the eval stage (after every result is saved)."""

    min_score: float | None = Field(
        default=None, ge=0.0, le=1.0, description="the final teacher's domain score"
    )
    min_retention: float | None = Field(
        default=None, gt=0.0, description="each student's score / the teacher's"
    )
    min_general_retention: float | None = Field(
        default=None,
        gt=0.0,
        description="final teacher / base on the general set (lm-eval tasks when stages.eval.general is set)",
    )


class GeneralEval(Strict):
    """General ability on lm-evaluation-harness tasks (`general_eval.py`): every model of the run
    is scored by lm-eval itself; the mean of `metric` over the tasks, divided by the base model's,
    is each model's general retention (the gate `min_general_retention` reads it)."""

    tasks: list[str] = Field(
        default_factory=lambda: ["verticalft_general_mc"],
        min_length=1,
        description="lm-eval task names: the shipped verticalft_general_mc (300 general questions, "
        "CC0), tasks in include_path, or lm-eval's own (their datasets must be in the HF cache: "
        "lm-eval runs offline)",
    )
    include_path: str | None = Field(
        default="data_pipelines/general/lm_eval",
        description="a folder of lm-eval task YAMLs (lm-eval's --include_path); lm-eval runs with "
        "it as its working directory, so relative data_files in them load from it",
    )
    limit: int | None = Field(
        default=None, ge=1, description="the first N items of each task (lm-eval's --limit)"
    )
    num_fewshot: int | None = Field(default=None, ge=0, description="default: each task's own")
    metric: str = Field(default="acc", description="the task metric general retention averages")
    backend: Literal["auto", "vllm", "hf"] = Field(
        default="auto",
        description="lm-eval's model type. auto: vllm with a CUDA GPU and vLLM installed, else hf "
        "(on CPU a vLLM engine takes a minute to start per model, transformers seconds)",
    )
    batch_size: int | Literal["auto"] = Field(default=8, description="lm-eval's --batch_size")
    apply_chat_template: bool = Field(
        default=False, description="render each request with the model's chat template"
    )
    model_args: dict[str, Any] = Field(
        default_factory=dict,
        description="added to lm-eval's --model_args, e.g. {gpu_memory_utilization: 0.8} (default "
        "dtype: float32 on CPU, the model's own on a GPU)",
    )


class EvalStage(Strict):
    """Every model of the run on the domain eval (and the general set): per item, per task."""

    backend: Literal["auto", "vllm", "hf"] = Field(
        default="auto", description="auto: vLLM when installed, else transformers"
    )
    include_base: bool = Field(default=True, description="the untrained teacher as the reference row")
    max_items: int | None = Field(default=None, ge=1, description="default: the whole set")
    max_new_tokens: int | None = Field(default=None, ge=1, description="default: evaluation.max_new_tokens")
    engine_args: dict[str, Any] = Field(default_factory=dict, description="passed to vllm.LLM(...)")
    env: dict[str, str] = Field(default_factory=dict, description="environment of the vLLM process")
    general: GeneralEval | None = Field(
        default=None, description="general ability on lm-evaluation-harness tasks (none: not measured)"
    )
    gates: Gates = Field(default_factory=Gates)


class Slo(Strict):
    """Latency objectives (milliseconds); a sweep point meets them when `min_attainment` of its
    requests meet every one (vLLM's goodput)."""

    ttft_ms: float | None = Field(default=500.0, gt=0)
    tpot_ms: float | None = Field(default=50.0, gt=0)
    e2el_ms: float | None = Field(default=None, gt=0)
    min_attainment: float = Field(default=0.9, gt=0.0, le=1.0)

    def goodput_args(self) -> list[str]:
        """`vllm bench serve --goodput` arguments for the objectives set (none: no goodput)."""
        pairs = [
            f"{k}:{v:g}"
            for k, v in (("ttft", self.ttft_ms), ("tpot", self.tpot_ms), ("e2el", self.e2el_ms))
            if v is not None
        ]
        return ["--goodput", *pairs] if pairs else []


class FitShape(Strict):
    """A second request shape, to separate what input and output tokens cost."""

    input_len: int = Field(ge=1)
    output_len: int = Field(ge=1)


class BenchStage(Strict):
    """A vLLM server per model on 127.0.0.1, `vllm bench serve` over the concurrency sweep."""

    models: list[str] | None = Field(
        default=None,
        description="default: the final teacher and every distilled student; names: teacher, cpt, sft, dpo, "
        "`<student>`",
    )
    concurrency: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: [1, 8, 32], min_length=1, description="the sweep's concurrent requests"
    )
    num_prompts: int | None = Field(
        default=None, ge=1, description="per point; default 4 × concurrency, at least 16"
    )
    input_len: int = Field(default=512, ge=1, description="prompt tokens per request")
    output_len: int = Field(default=128, ge=1, description="answer tokens per request")
    slo: Slo = Field(default_factory=Slo)
    # When vLLM can load the adapter; parity is greedy, on `parity_prompts` eval prompts.
    lora: bool = Field(
        default=True,
        description="serve a LoRA-trained model as its base + the adapter (`--enable-lora`) and check parity "
        "against the merged weights",
    )
    parity_prompts: int = Field(default=16, ge=0)
    max_model_len: int | None = Field(default=None, ge=16, description="default: input + output + 64")
    repeats: int = Field(default=2, ge=1, description="measurements of each point of the sweep")
    max_spread: float = Field(
        default=0.2,
        gt=0,
        description="the report flags a point whose repeats disagree by more than this (relative)",
    )
    # Recorded as the point's `sizing`: a 2-second point repeats badly on any machine.
    min_seconds: float = Field(
        default=10.0,
        ge=0,
        description="a point shorter than this is re-run with proportionally more requests",
    )
    # Run at the priced concurrency.
    fit_shape: FitShape | None = Field(
        default=None,
        description="second request shape, so the cost stage can separate input and output token costs "
        "(default: input_len / 4, same output_len)",
    )
    # One number for all, or per model name (`teacher` = the final teacher; others default to 1).
    gpus_per_model: Annotated[int, Field(ge=1)] | dict[str, Annotated[int, Field(ge=1)]] = Field(
        default=1,
        description="GPUs per served model = vLLM's --tensor-parallel-size, and what its price multiplies",
    )
    server_args: list[str] = Field(default_factory=list, description="extra `vllm serve` flags")
    env: dict[str, str] = Field(default_factory=dict, description="environment of the server")
    startup_timeout_s: float = Field(default=900.0, gt=0)

    def fit(self) -> FitShape:
        """The second shape: `fit_shape`, default a quarter of the prompt and the same answer."""
        return self.fit_shape or FitShape(input_len=max(1, self.input_len // 4), output_len=self.output_len)

    def gpus_for(self, name: str, is_teacher: bool = False) -> int:
        g = self.gpus_per_model
        if isinstance(g, int):
            return g
        return g.get(name) or (g.get("teacher") if is_teacher else None) or 1


Scheme = Literal["W8A8", "W4A16", "FP8_DYNAMIC"]


class ExportStage(Strict):
    """The models leave the run: quantized variants (llm-compressor, compressed-tensors format,
    measured by eval/bench/cost/route like every other model) and one folder per model with a
    model card, ready for `verticalft push`."""

    models: list[str] | None = Field(
        default=None,
        description="default: the final teacher and every distilled student; names: teacher, cpt, sft, "
        "dpo, `<student>`",
    )
    schemes: list[Scheme] = Field(
        default_factory=lambda: list[Scheme](["W8A8"]),
        description="compressed-tensors presets made with llm-compressor: W8A8 (INT8 weights and "
        "activations, SmoothQuant + GPTQ), W4A16 (4-bit weights, GPTQ), FP8_DYNAMIC (data-free); [] "
        "exports the bf16 folders only",
    )
    calibration_samples: int = Field(
        default=256, ge=1, description="SFT conversations GPTQ/SmoothQuant calibrate on (the run's own)"
    )
    calibration_max_length: int = Field(default=1024, ge=16, description="tokens per calibration sample")
    smoothing: float = Field(
        default=0.8, ge=0.0, lt=1.0, description="SmoothQuant strength for W8A8 (0: GPTQ alone)"
    )
    python: str | None = Field(
        default=None,
        description="the interpreter that has llm-compressor (it pins other transformers/compressed-"
        "tensors releases than vLLM); default: $VERTICALFT_EXPORT_PYTHON, else `<venv>-export`",
    )


class Stages(Strict):
    """The stages to run: a stage runs when its section is present."""

    curate: CurateStage | None = None
    cpt: CptStage | None = None
    sft: SftStage | None = None
    dpo: DpoStage | None = None
    distill: DistillStage | None = None
    eval: EvalStage | None = None
    bench: BenchStage | None = None
    export: ExportStage | None = None


# --------------------------------------------------------------------------- compute / cost
def _check_mfu(v: Any) -> float | dict[str, float] | None:
    """`compute.mfu`: a share in (0, 1], or one per method."""
    methods = ("full", "lora", "qlora", "inference")
    ok = lambda x: isinstance(x, int | float) and not isinstance(x, bool) and 0 < x <= 1  # noqa: E731
    if v is None or ok(v):
        return v
    if isinstance(v, dict):
        bad = [k for k in v if k not in methods]
        if bad:
            raise ValueError(f"unknown method(s) {', '.join(map(str, bad))}; one of {', '.join(methods)}")
        if all(ok(x) for x in v.values()):
            return v
    raise ValueError(f"a share in (0, 1] (e.g. 0.4), or one per method ({', '.join(methods)}): got {v!r}")


class Compute(Strict):
    """Where training runs. One definition of "GPUs": `nodes` × `gpus_per_node`, one process per
    GPU. The launcher starts that many processes, `plan` shards over them and `cost` charges them
    for the launched stages (`launcher: none` runs a stage in this one process: one device)."""

    gpu: str = Field(
        default="h100-sxm",
        description="a name in pricing.GPUS (price, memory, FLOP/s), e.g. h100-sxm, l40s, cpu",
    )
    nodes: int = Field(
        default=1,
        ge=1,
        description="> 1: the same `verticalft run` on every node (Slurm's SLURM_NODEID/SLURM_JOB_NODELIST, "
        "or NODE_RANK/MASTER_ADDR/MASTER_PORT), the run directory on storage every node sees; node 0 "
        "leads (nodes.py)",
    )
    gpus_per_node: int = Field(
        default=1, ge=1, description="= processes per node (on a CPU machine: processes)"
    )
    # The plan shows what it used.
    mfu: Annotated[Any, AfterValidator(_check_mfu)] = Field(
        default=None,
        description="model FLOPs utilisation: a share in (0, 1], or one per method (full, lora, qlora, "
        "inference); default per method: verticalft.plan.MFU_DEFAULTS",
    )
    launcher: Literal["none", "torchrun", "accelerate"] = Field(
        default="none", description="none: training stages run in this one process"
    )
    accelerate_config: str = Field(
        default="ddp", description="ddp | fsdp2 | deepspeed-zero3 | a path to your own config"
    )
    seed: int = 42
    # Longer than the longest step one rank does alone — rank 0 scoring the teacher before the
    # cache barrier, merging an adapter into a 32B model. `plan` warns when a planned step exceeds it.
    timeout_minutes: float = Field(
        default=120.0,
        gt=0,
        description="how long a rank waits at a barrier for the others (torch's default is 10 minutes)",
    )

    node_timeout_s: float = Field(
        default=120.0,
        gt=0,
        description="several nodes: a node whose heartbeat (in <run>/nodes/) has not moved for this long "
        "is gone, and the run fails naming it",
    )

    @property
    def world_size(self) -> int:
        """Processes (= GPUs) of a launched stage, over every node."""
        return self.nodes * self.gpus_per_node

    @property
    def training_gpus(self) -> int:
        """GPUs a training stage occupies: the world size when launched, else one."""
        return self.world_size if self.launcher != "none" else 1


class ApiPrice(Strict):
    """$ per 1M tokens; leave both out for an API in the shipped table (`pricing.API_PRICES`).
    `source` and `as_of` say where an override's figures come from (shown in the report)."""

    input_usd_per_m: float | None = Field(default=None, ge=0)
    output_usd_per_m: float | None = Field(default=None, ge=0)
    source: str | None = None
    as_of: str | None = None


class Cost(Strict):
    """What training and serving cost, against the APIs the models replace."""

    usd_per_gpu_hour: float | None = Field(default=None, gt=0, description="default: the GPU table's price")
    serve_gpu: str | None = Field(
        default=None, description="the GPU the models are served on (default compute.gpu)"
    )
    serve_usd_per_gpu_hour: float | None = Field(
        default=None, gt=0, description="serve_gpu's price (default the GPU table's)"
    )
    compare: dict[str, ApiPrice] = Field(default_factory=dict, description="APIs to compare against, by name")
    daily_tokens: float = Field(default=5_000_000, ge=0, description="tokens served per day")
    input_fraction: float = Field(
        default=0.5, ge=0.0, le=1.0, description="share of the daily tokens that are prompt"
    )
    # Replicas are sized to carry the peak flat out.
    peak_to_average: float = Field(default=2.0, ge=1.0, description="busiest hour's rate ÷ the day's average")
    # A CPU or another GPU's measurement is not a serve_gpu figure.
    throughput_scale: float | None = Field(
        default=None,
        gt=0,
        description="throughput on serve_gpu ÷ throughput on the device the bench ran on; required when they "
        "differ",
    )
    other_upfront_usd: float = Field(
        default=0.0, ge=0, description="data preparation, people: added to payback"
    )

    @model_validator(mode="after")
    def _priced(self) -> Cost:
        from verticalft.pricing import api_price

        for name, price in self.compare.items():
            api_price(name, price.input_usd_per_m, price.output_usd_per_m)  # ValueError names the fix
        return self


class RouteTarget(Strict):
    """What the cascade must reach (exactly one): an absolute domain score, a share of the last
    tier's score, or a price ceiling in effective $/1M at cost.daily_tokens."""

    min_quality: float | None = Field(default=None, ge=0.0, le=1.0)
    min_retention: float | None = Field(default=None, gt=0.0, le=1.0)
    max_usd_per_m: float | None = Field(default=None, gt=0.0)

    @model_validator(mode="after")
    def _one(self) -> RouteTarget:
        given = [k for k in ("min_quality", "min_retention", "max_usd_per_m") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of min_quality, min_retention, max_usd_per_m (got {given or 'none'})"
            )
        return self


class RouteApi(Strict):
    """An API tier: its answers to the eval prompts (JSONL rows with `prompt` and `prediction`),
    scored by the eval stage's rules; its price comes from cost.compare / the shipped table."""

    answers: str


class Route(Strict):
    """Cascades decided offline from the eval answers: each tier answers when its confidence is
    at least its threshold, else hands over to the next. Names: run models (`teacher` = the final
    teacher) or `api:<name>` (see `apis`). Default: each distilled student → the teacher."""

    cascades: list[Annotated[list[str], Field(min_length=2)]] | None = Field(
        default=None, description="tiers in order, e.g. [student-s, teacher]; default: each student → teacher"
    )
    apis: dict[str, RouteApi] = Field(default_factory=dict, description="API tiers by name (`api:<name>`)")
    target: RouteTarget = Field(default_factory=lambda: RouteTarget(min_retention=0.95))

    @model_validator(mode="after")
    def _apis_have_answers(self) -> Route:
        named = {n.removeprefix("api:") for cas in self.cascades or [] for n in cas if n.startswith("api:")}
        missing = sorted(named - set(self.apis))
        if missing:
            raise ValueError(
                f"tier(s) {', '.join('api:' + m for m in missing)} need their answers in route.apis"
            )
        return self


class Tracking(Strict):
    """Where the run's settings and results are logged besides the manifest (tracking.py)."""

    backend: Literal["mlflow", "wandb", "tensorboard", "none"] = Field(
        default="tensorboard",
        description="mlflow: one run per pipeline, a nested run per stage (params, metrics, artifacts), each "
        "trainer's loss curve nested under its stage; wandb: a run per stage in one group per pipeline, "
        "the trainers' runs in it; tensorboard: stage metrics as scalars in "
        "<run>/tensorboard/ beside the trainers' events; none: nothing, the trainers report nowhere",
    )
    wandb_mode: Literal["offline", "online"] = Field(
        default="offline",
        description="wandb: offline writes <run>/wandb/ for a later `wandb sync`; online needs "
        "WANDB_API_KEY in the environment (or `wandb login`)",
    )
    uri: str | None = Field(
        default=None,
        description="mlflow: the tracking URI (a team server http://…); default: an embedded SQLite store "
        "`sqlite:///<run>/mlflow.db` that `mlflow ui --backend-store-uri` opens without a server",
    )
    experiment: str | None = Field(
        default=None,
        description="mlflow experiment (default: <recipe name>/<profile>) or wandb project (default: the "
        "recipe name; the group is <recipe name>/<profile>)",
    )


class Evaluation(Strict):
    """Quick domain eval (greedy generation, exact/numeric match) recorded by training stages."""

    max_items: int | None = Field(default=None, ge=1, description="default: the whole eval set")
    max_new_tokens: int = Field(default=16, ge=1)
    batch_size: int = Field(default=32, ge=1)
    numeric_tolerance: float = Field(default=0.001, ge=0, description="relative, for numeric answers")


class Recipe(Strict):
    """One vertical: its models, data, stages, compute and cost."""

    name: str = Field(
        pattern=r"^[a-z][a-z0-9_]*$", description="names the run folder, `runs/<name>/<profile>/`"
    )
    description: str = ""
    models: Models
    tiny: TinyModels = Field(default_factory=TinyModels)
    data: Data
    stages: Stages = Field(default_factory=Stages)
    compute: Compute = Field(default_factory=Compute)
    cost: Cost = Field(default_factory=Cost)
    route: Route = Field(default_factory=Route)
    evaluation: Evaluation = Field(default_factory=Evaluation)
    tracking: Tracking = Field(default_factory=Tracking)
    profiles: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per-profile overlays laid over the recipe (`-p <profile>`)"
    )


TinyModels.model_rebuild()


# --------------------------------------------------------------------------- errors
class Problem(BaseModel):
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path or '<root>'}: {self.message}"


class RecipeError(Exception):
    """All problems of a recipe at once. The CLI prints them and exits 2."""

    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: {len(problems)} problem(s)\n" + "\n".join(f"  - {p}" for p in problems))


# Names users bring from PEFT/TRL that the recipe spells differently.
ALIASES = {
    "rank": "r",
    "lora_r": "r",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
    "quant": "quantization",
    "load_in_4bit": "quantization",
    "lr": "learning_rate",
    "epochs": "num_train_epochs",
    # compute keys of earlier versions, where "GPUs" meant three things
    "num_gpus": "nodes' and 'gpus_per_node (GPUs = nodes × gpus_per_node)",
    "nproc_per_node": "gpus_per_node",
    # cost key of earlier versions: average load 0.5 = peak twice the average
    "utilisation": "peak_to_average",
}


def did_you_mean(word: str, options: Iterable[str]) -> str:
    options = list(options)
    if ALIASES.get(word) and ALIASES[word].split("'")[0] in options:
        return f" (did you mean '{ALIASES[word]}'?)"
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _walk(loc: tuple[Any, ...]) -> tuple[FieldInfo | None, Any]:
    """Follow an error's `loc` from `Recipe`: (the last key on the way that names a field, the block
    class or type it holds). List indices, mapping keys (`cost.compare.<name>`) and pydantic's
    union tags are steps inside a field's value, not fields."""
    model: Any = Recipe
    found = None
    for part in loc:
        if isinstance(part, int) or not _is_block(model):
            continue
        field = model.model_fields.get(str(part))
        if field is not None:
            found, model = field, _unwrap(field.annotation)
    return found, model


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model class that owns the field at `loc` (to suggest its field names)."""
    model = _walk(loc)[1]
    return model if _is_block(model) else None


def _is_block(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _unwrap(annotation: Any) -> Any:
    """The block class inside an annotation (`X | None`, `list[X]`, `dict[str, X]`), else the
    annotation when it is a plain class."""
    if _is_block(annotation):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        inner = _unwrap(arg)
        if _is_block(inner):
            return inner
    return annotation if isinstance(annotation, type) else None


def _with_description(message: str, loc: tuple[Any, ...]) -> str:
    """`message — <the key's description>` when the error is about a described key's own value (not
    about a block inside it, whose own keys say more)."""
    field, value = _walk(loc)
    if field is None or not field.description or _is_block(value):
        return message
    return f"{message} — {field.description}"


def _as_written(loc: tuple[Any, ...], raw: dict[str, Any]) -> tuple[Any, ...]:
    """`data.sft.0.format` → `data.sft.format` when the recipe gave the set as one mapping, so the
    path names the key the user wrote (validation sees every set as a list)."""
    data = raw.get("data")
    one = len(loc) > 2 and loc[0] == "data" and loc[1] in ("sft", "preferences") and loc[2] == 0
    if one and isinstance(data, dict) and isinstance(data.get(loc[1]), dict):
        return loc[:2] + loc[3:]
    return loc


def _pydantic_problems(err: ValidationError, raw: dict[str, Any]) -> list[Problem]:
    problems = []
    for e in err.errors():
        loc = tuple(e["loc"])
        path = ".".join(str(p) for p in _as_written(loc, raw))
        if e["type"] == "extra_forbidden":
            owner = _model_at(loc[:-1])
            hint = did_you_mean(str(loc[-1]), owner.model_fields) if owner else ""
            problems.append(Problem(path=path, message=f"unknown key{hint}"))
        else:
            problems.append(Problem(path=path, message=_with_description(e["msg"], loc)))
    return problems


def trainer_config_fields(config_class: str) -> set[str]:
    """Field names of the TRL config class (e.g. `SFTConfig`) a `trainer:` block is passed to."""
    import trl

    return {f.name for f in dataclasses.fields(getattr(trl, config_class))}


def _trainer_problems(raw: dict[str, Any]) -> list[Problem]:
    """`trainer:` keys of the training stages (`stages.registry`) that their TRL config class does
    not have, or that the stage sets itself (`Training.managed`)."""
    from verticalft.stages.registry import STAGES

    problems: list[Problem] = []
    stages = raw.get("stages") or {}
    if not isinstance(stages, dict):
        return problems
    for spec in STAGES:
        if spec.training is None:
            continue
        block = (stages.get(spec.name) or {}) if isinstance(stages.get(spec.name) or {}, dict) else {}
        # the stage's block, and each distill phase's keys laid over it
        phases = block.get("phases")
        phases = phases if isinstance(phases, list) else []
        blocks = [(f"stages.{spec.name}.trainer", block.get("trainer"))] + [
            (f"stages.{spec.name}.phases.{i}.trainer", p.get("trainer"))
            for i, p in enumerate(phases)
            if isinstance(p, dict)
        ]
        for where, trainer in blocks:
            if not isinstance(trainer, dict) or not trainer:
                continue
            cls = spec.training.config_for(block)
            fields = trainer_config_fields(cls)
            managed = spec.training.managed
            for key in trainer:
                path = f"{where}.{key}"
                if key in managed:
                    problems.append(Problem(path=path, message=f"set by verticalft from {managed[key]}"))
                elif key not in fields:
                    problems.append(
                        Problem(path=path, message=f"not a field of trl.{cls}{did_you_mean(key, fields)}")
                    )
                elif key == "report_to":
                    problems += _report_to_problems(path, trainer[key])
    return problems


def _report_to_problems(path: str, value: Any) -> list[Problem]:
    """Integrations `report_to` names that transformers cannot find here: the trainer would fail
    at its first step, after the model is loaded (it used to pass validation with wandb absent)."""
    from transformers.integrations import get_available_reporting_integrations

    names = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    available = set(get_available_reporting_integrations())
    return [
        Problem(
            path=path,
            message=f"{n} is not installed here: install it, or set tracking.backend (mlflow, tensorboard)",
        )
        for n in names
        if isinstance(n, str) and n not in ("none", "all") and n not in available
    ]


def _model_ref_problems(recipe: Recipe) -> list[Problem]:
    """Model references that cannot work, found from file headers and configs (milliseconds), not
    when a stage starts: a GGUF file transformers cannot load (gguf_source) and a `prune://`
    student that does not fit its teacher (pruning)."""
    from verticalft import gguf_source, pruning
    from verticalft.plan import teacher_layers

    distill = recipe.stages.distill
    teachers = [("models.teacher", recipe.models.teacher)]
    students = [(f"models.students.{i}", ref) for i, ref in enumerate(recipe.models.students)]
    if distill is not None:
        if distill.teacher.model:
            teachers.append(("stages.distill.teacher.model", distill.teacher.model))
        students += [(f"stages.distill.students.{i}", ref) for i, ref in enumerate(distill.students or [])]
    problems = [
        Problem(path=p, message=m) for p, ref in teachers + students for m in gguf_source.ref_problems(ref)
    ]
    problems += [
        Problem(path=p, message="prune:// makes a student from the teacher; the teacher must be a model")
        for p, ref in teachers
        if pruning.is_prune(ref)
    ]
    if any(pruning.is_prune(ref) for _, ref in students):
        layers = None if any(pruning.is_prune(ref) for _, ref in teachers) else teacher_layers(recipe)
        problems += [
            Problem(path=p, message=m) for p, ref in students for m in pruning.spec_problems(ref, layers)
        ]
    return problems


# --------------------------------------------------------------------------- loading
def deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; lists and scalars in `overlay` replace those in `base`."""
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _substitute(value: Any, name: str) -> Any:
    if isinstance(value, str):
        return value.replace("{name}", name)
    if isinstance(value, dict):
        return {k: _substitute(v, name) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, name) for v in value]
    return value


def parse_override(text: str) -> tuple[list[str], Any]:
    """`stages.sft.lora.r=8` → (['stages','sft','lora','r'], 8). Values are parsed as YAML."""
    if "=" not in text:
        raise ValueError(f"override '{text}' must look like key.path=value")
    key, value = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ValueError(f"override '{text}' has an empty key part")
    try:
        parsed = yaml.safe_load(value) if value != "" else None
    except yaml.YAMLError as exc:  # e.g. `?` inside a flow list: [prune://teacher?layers=2]
        problem = getattr(exc, "problem", None) or exc
        raise ValueError(
            f"override '{text}': the value is not valid YAML ({problem}); quote list items that hold "
            """`?` or `: `, e.g. models.students='["prune://teacher?layers=2"]'"""
        ) from None
    return key.split("."), as_number(parsed)


def apply_overrides(raw: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    out = copy.deepcopy(raw)
    for text in overrides:
        keys, value = parse_override(text)
        node = out
        for key in keys[:-1]:
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        node[keys[-1]] = value
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise RecipeError(str(path), [Problem(path="", message=f"not valid YAML: {exc}")]) from None
    if not isinstance(data, dict):
        raise RecipeError(str(path), [Problem(path="", message="the top level must be a mapping")])
    return data


def profile_dirs(path: Path) -> list[Path]:
    """Where the shared profile overlays of the recipe at `path` may live, first match wins:
    the recipe's own folder's `profiles/`, then `recipes/profiles/` of the current directory.

    Why the second: a recipe kept outside `recipes/` (a user's copy, a scratch file) would
    otherwise lose the shared `tiny` overlay silently whenever it has its own `profiles.tiny`
    block, and `-p tiny` would run with the full-size models.
    """
    dirs = [path.parent / PROFILE_DIR_NAME, Path.cwd() / "recipes" / PROFILE_DIR_NAME]
    out: list[Path] = []
    for d in dirs:
        if d.is_dir() and all(d.resolve() != o.resolve() for o in out):
            out.append(d)
    return out


def shared_profile(path: Path, profile: str) -> Path | None:
    """The shared overlay file of `profile` for the recipe at `path` (see `profile_dirs`), or None."""
    for d in profile_dirs(path):
        if (d / f"{profile}.yaml").is_file():
            return d / f"{profile}.yaml"
    return None


def resolve_raw(path: str | Path, profile: str = "full", overrides: Iterable[str] = ()) -> dict[str, Any]:
    """The recipe dict after profile overlays and overrides, before validation."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(str(path), [Problem(path="", message="recipe file not found")])
    raw = _read_yaml(path)
    name = str(raw.get("name", path.stem))
    if profile != "full":
        shared = shared_profile(path, profile)
        own = (raw.get("profiles") or {}).get(profile) if isinstance(raw.get("profiles"), dict) else None
        if shared is None and own is None:
            available = sorted({p.stem for d in profile_dirs(path) for p in d.glob("*.yaml")})
            raise RecipeError(
                str(path),
                [
                    Problem(
                        path="profile",
                        message=f"no profile '{profile}'{did_you_mean(profile, available)}; "
                        f"have: full, {', '.join(available)}",
                    )
                ],
            )
        if shared is not None:
            raw = deep_merge(raw, _substitute(_read_yaml(shared), name))
        if own:
            raw = deep_merge(raw, _substitute(own, name))
    return apply_overrides(raw, overrides)


def load_recipe(path: str | Path, profile: str = "full", overrides: Iterable[str] = ()) -> Recipe:
    """Load, overlay and validate a recipe; raises RecipeError listing every problem."""
    try:
        raw = resolve_raw(path, profile, overrides)
    except ValueError as exc:  # a malformed override
        raise RecipeError(str(path), [Problem(path="override", message=str(exc))]) from None
    problems: list[Problem] = []
    recipe = None
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as err:
        problems.extend(_pydantic_problems(err, raw))
    problems.extend(_trainer_problems(raw))
    if recipe is not None:
        problems.extend(_model_ref_problems(recipe))
    if problems:
        raise RecipeError(str(path), problems)
    assert recipe is not None
    return recipe


def recipe_to_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json", exclude={"profiles"}), sort_keys=False)
