"""What every stage gets (`StageContext`) and returns (`StageResult`, `PartialFailure`).

Stages never call each other: they ask the context for "the latest completed model before me",
which the context answers from the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from verticalft.formats import FormatName, Kind
from verticalft.gguf_source import is_gguf, resolve_gguf
from verticalft.models import is_tiny, tiny_name
from verticalft.recipe import Recipe, SetSource, Source
from verticalft.rundir import RunDir
from verticalft.stages.registry import model_stages

SectionT = TypeVar("SectionT", bound=BaseModel)  # a recipe section class (stages.<name>)


@dataclass
class StageResult:
    outputs: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    summary: str = ""


class PartialFailure(RuntimeError):
    """A stage with several independent units (students) where some failed: the finished units'
    outputs and metrics are kept in the manifest; the stage is still marked failed."""

    def __init__(self, message: str, result: StageResult):
        super().__init__(message)
        self.result = result


@dataclass
class StageContext:
    recipe: Recipe
    run: RunDir
    stage: str
    resume: bool = False
    subdir: str | None = None  # one unit of a stage with several outputs (distill/<student>/)

    @property
    def dir(self) -> Path:
        root = self.run.stage_dir(self.stage)
        return root / self.subdir if self.subdir else root

    def sub(self, name: str) -> StageContext:
        """The same stage, working in `<stage>/<name>/` (its own checkpoints and outputs)."""
        return StageContext(self.recipe, self.run, self.stage, self.resume, name)

    @property
    def checkpoints(self) -> Path:
        return self.dir / "checkpoints"

    def stage_section(self, kind: type[SectionT]) -> SectionT:
        """This stage's own recipe section `stages.<stage>`, typed and never None: the pipeline runs
        a stage only when its section is present, so inside its `run` an absent section is a caller
        bug (a stage run by hand on a recipe without it), said here rather than as an
        AttributeError on None further down."""
        found = getattr(self.recipe.stages, self.stage, None)
        if found is None:
            raise RuntimeError(f"stages.{self.stage}: the {self.stage} stage ran without its recipe section")
        if not isinstance(found, kind):
            raise TypeError(f"stages.{self.stage} is a {type(found).__name__}, not a {kind.__name__}")
        return found

    def resolve_model(self, ref: str) -> str:
        """An HF id/path as written in the recipe; `tiny://name` → the folder tiny_models built;
        a GGUF file (`*.gguf`, `pkg://…`) → its HF folder, converted once (gguf_source)."""
        if is_gguf(ref):
            return resolve_gguf(ref)
        if not is_tiny(ref):
            return ref
        path = self.run.output("tiny_models", tiny_name(ref))
        if path is None:
            raise RuntimeError(f"{ref}: the tiny_models stage has not completed in {self.run.root}")
        return path

    def input_model(self) -> str:
        """The newest completed model before this stage (else the recipe's teacher)."""
        models = model_stages()
        order = models[: models.index(self.stage)] if self.stage in models else models
        for prev in reversed(order):
            path = self.run.output(prev, "model")
            if path:
                return path
        return self.resolve_model(self.recipe.models.teacher)

    def curated(self, name: Kind) -> list[SetSource] | None:
        """A curated set's sources when a curate stage completed in this run, else None (the stage
        then reads the recipe's raw sources): a folder per recipe source (`<set>/<i>/`) with that
        source's weight, so `data.load_sets` weights curated rows as it weights raw ones."""
        path = self.run.output("curate", name)
        if not path:
            return None
        # curate writes canonical rows: read them as such, no format detection
        fmt: FormatName = "messages" if name == "sft" else "preference"
        raw = getattr(self.recipe.data, name) or []
        folders = [(Path(path) / str(i), s) for i, s in enumerate(raw)]
        # a source curation kept no row of has no folder
        return [
            SetSource(path=str(f), license="curated", format=fmt, weight=s.weight)
            for f, s in folders
            if f.is_dir()
        ]

    def set_sources(self, name: Kind) -> list[SetSource]:
        """What this stage trains on from `data.<name>`: the curated set when curate ran, else the
        recipe's raw sources; a recipe without that set is an error naming its key."""
        sources = self.curated(name) or getattr(self.recipe.data, name)
        if not sources:
            raise ValueError(f"stages.{self.stage}: needs data.{name}")
        return sources

    def curated_corpus(self) -> list[Source] | None:
        """The curated corpus (one folder of Parquet shards) when curate ran, else None."""
        path = self.run.output("curate", "corpus")
        return [Source(path=path, license="curated")] if path else None

    def eval_items(self, rephrased: bool = False) -> list[dict[str, Any]]:
        """The recipe's eval items (checked, as the eval stage reads them) for the quick eval;
        `rephrased`: those of `data.eval_rephrased` ([] when the recipe names none)."""
        from verticalft.scoring import load_items

        source = self.recipe.data.eval_rephrased if rephrased else self.recipe.data.eval
        if source is None:
            return []
        return load_items(source, self.recipe.evaluation.max_items)
