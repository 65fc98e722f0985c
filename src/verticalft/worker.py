"""Per-process entry point for launched training stages (`torchrun` / `accelerate launch`).

    python -m torch.distributed.run --nproc_per_node 2 -m verticalft.worker --run-dir R --stage sft

Every rank runs the stage (the HF Trainer handles DDP/FSDP/DeepSpeed through accelerate); rank 0
writes `<stage>/result.json`, which the orchestrating process turns into the manifest entry.
"""

from __future__ import annotations

import argparse

import yaml

from verticalft.pipeline import run_stage_in_process, write_worker_result
from verticalft.recipe import Recipe
from verticalft.rundir import RunDir
from verticalft.stages.base import StageContext, is_main_process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--stage", required=True)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    run = RunDir(args.run_dir)
    recipe = Recipe.model_validate(yaml.safe_load((run.root / "recipe.resolved.yaml").read_text()))
    result = run_stage_in_process(StageContext(recipe, run, args.stage, resume=args.resume))
    if is_main_process():
        write_worker_result(run, args.stage, result)


if __name__ == "__main__":
    main()
