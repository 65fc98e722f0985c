"""export: the models leave the run (`stages.export`), last, after route whose numbers it quotes.

`export/<name>/` per chosen model (default: the final teacher and every student) and per
quantized variant (stages/quantize.py): the weights (hard links to the run's folders), the
tokenizer and chat template, and a Hub model card (`README.md`, card.py). Each folder is an HF
model repo as it stands: `verticalft push` uploads one, `vllm serve` and transformers load it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from verticalft.rundir import atomic_write_text
from verticalft.stages.base import StageContext, StageResult
from verticalft.stages.quantize import chosen_models, export_section
from verticalft.stages.run_models import models_in_run, quantized_variants


def link_folder(src: Path, dst: Path) -> None:
    """`dst` with every file of `src` (hard links where the filesystem allows, else copies)."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.name != "README.md":
            target = dst / f.name
            target.unlink(missing_ok=True)
            try:
                os.link(f, target)
            except OSError:
                shutil.copy2(f, target)


def run(ctx: StageContext) -> StageResult:
    from verticalft.card import model_card

    cfg = export_section(ctx)
    chosen = {m.name for m in chosen_models(ctx, cfg)}
    full = [m for m in models_in_run(ctx, include_base=True) if m.quantization is None]
    # every variant, those this machine could not serve too (to be measured on a GPU)
    everything = full + quantized_variants(ctx, full, served_only=False)
    outputs = {}
    for m in everything:
        if m.name not in chosen and m.quantized_from not in chosen:
            continue
        folder = ctx.dir / m.name
        link_folder(Path(m.path), folder)
        atomic_write_text(folder / "README.md", model_card(ctx, m))
        outputs[m.name] = str(folder)
    return StageResult(
        outputs=outputs,
        metrics={"folders": outputs},
        summary=f"{len(outputs)} folders with model cards in {ctx.dir}",
    )
