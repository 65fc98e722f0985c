"""Per-process entry point for launched training stages (`torchrun` / `accelerate launch`).

    python -m torch.distributed.run --nproc_per_node 2 -m verticalft.worker --run-dir R --stage sft

Every rank runs the stage (the HF Trainer handles DDP/FSDP/DeepSpeed through accelerate); rank 0
writes `<stage>/result.json`, which the orchestrating process turns into the manifest entry.
"""

from __future__ import annotations

import argparse

import yaml

from verticalft.launch import init_process_state, is_main_process
from verticalft.logs import show_logs
from verticalft.pipeline import run_stage_in_process, write_worker_result
from verticalft.recipe import Recipe
from verticalft.rundir import RunDir
from verticalft.stages.base import PartialFailure, StageContext


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--stage", required=True)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    show_logs()  # progress lines to stdout, which the launcher passes on to the terminal
    run = RunDir(args.run_dir)
    recipe = Recipe.model_validate(yaml.safe_load((run.root / "recipe.resolved.yaml").read_text()))
    # the process group (with the recipe's timeout) and this rank's GPU, before any model loads
    init_process_state(recipe.compute.timeout_minutes)
    try:
        result = run_stage_in_process(StageContext(recipe, run, args.stage, resume=args.resume))
    except PartialFailure as exc:  # the finished units (students) reach the manifest all the same
        if is_main_process():
            write_worker_result(run, args.stage, exc.result, failed=str(exc))
        raise SystemExit(1) from exc
    if is_main_process():
        write_worker_result(run, args.stage, result)


if __name__ == "__main__":
    main()
