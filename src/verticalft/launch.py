"""How a training stage is launched on several processes: the torchrun / accelerate command, and
the accelerate config it runs with.

The shipped accelerate configs (`accelerate_configs/`: ddp, fsdp2, deepspeed-zero3) describe the
parallelism only. Values the trainer also owns are derived per stage from the stage's `trainer:`
block, so the two can never disagree:

- FSDP: transformers refuses FSDP `activation_checkpointing` together with the trainer's
  `gradient_checkpointing` ("can't be set to True simultaneously", `Trainer.__init__`). Under
  FSDP the trainer key decides: it becomes the FSDP config's `fsdp_activation_checkpointing`
  (FSDP's own checkpointing avoids re-gathering shards in the backward) and the worker's
  `TrainingArguments` get `gradient_checkpointing=False` (`stages.training.trainer_config`).
- DeepSpeed: `gradient_accumulation_steps` and `gradient_clipping` are left out of the config, so
  accelerate passes "auto" and transformers fills them from the trainer's
  `gradient_accumulation_steps` / `max_grad_norm` (a pinned value that differs is DeepSpeed's
  config mismatch error).

The resolved config is written to `<run>/<stage>/accelerate_config.yaml`: what ran is on disk.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from verticalft.rundir import RunDir, atomic_write_text
from verticalft.stages import registry

if TYPE_CHECKING:
    from verticalft.recipe import Recipe

ACCELERATE_CONFIGS = Path(__file__).parent / "accelerate_configs"
# Keys of a DeepSpeed block in an accelerate config that the HF trainer owns.
TRAINER_OWNED_DEEPSPEED = ("gradient_accumulation_steps", "gradient_clipping")


def stage_accelerate_choice(recipe: Recipe, stage: str) -> str:
    """The accelerate config a training stage runs with: its own, else `compute.accelerate_config`."""
    own = getattr(getattr(recipe.stages, stage, None), "accelerate_config", None)
    return own or recipe.compute.accelerate_config


def stage_shards_weights(recipe: Recipe, stage: str) -> bool:
    """True when the stage's accelerate config spreads the weights over the ranks (FSDP, ZeRO-3)."""
    if recipe.compute.launcher != "accelerate":
        return False
    try:
        config = (
            yaml.safe_load(accelerate_config_path(stage_accelerate_choice(recipe, stage)).read_text()) or {}
        )
    except OSError:
        return False
    zero3 = (config.get("deepspeed_config") or {}).get("zero_stage") == 3
    return config.get("distributed_type") == "FSDP" or (
        config.get("distributed_type") == "DEEPSPEED" and zero3
    )


def accelerate_config_path(choice: str) -> Path:
    """A shipped config by name (ddp, fsdp2, deepspeed-zero3) or the user's own YAML file."""
    return Path(choice) if Path(choice).suffix in {".yaml", ".yml"} else ACCELERATE_CONFIGS / f"{choice}.yaml"


def is_fsdp_run() -> bool:
    """True inside a process started by `accelerate launch` with an FSDP config."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def is_deepspeed_run() -> bool:
    """True inside a process started by `accelerate launch` with a DeepSpeed config."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def is_sharded_run() -> bool:
    """FSDP or DeepSpeed (ZeRO-3): the model's weights are spread over the ranks once prepared."""
    return is_fsdp_run() or is_deepspeed_run()


def local_rank() -> int | None:
    """This process's device index under torchrun / accelerate (None when not launched)."""
    value = os.environ.get("LOCAL_RANK")
    return int(value) if value is not None else None


def rank() -> int:
    """This process's global rank (0 when not launched)."""
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """Rank 0: the process that writes shared files (results, merged models, caches)."""
    return rank() == 0


def world_size() -> int:
    """Processes in this launch (1 when not launched)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched() -> bool:
    """True in a process of a multi-process launch (torchrun / accelerate)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_process_state(timeout_minutes: float) -> None:
    """Under a launcher, make this process's distributed state before anything loads a model.

    - `torch.cuda.set_device(LOCAL_RANK)`: bitsandbytes quantizes onto `torch.cuda.current_device()`,
      which is 0 on every rank until something sets it (8 ranks' 4-bit models on GPU 0 otherwise);
    - accelerate's `PartialState` with the recipe's timeout: the process group exists before
      `from_pretrained`, so transformers' `is_fsdp_enabled()` holds at load time (FSDP's
      `cpu_ram_efficient_loading`: only local rank 0 reads the weights) and every barrier waits
      `compute.timeout_minutes`, not torch's default 10 minutes (a group made later by
      `TrainingArguments` keeps this one's timeout: accelerate's state is shared).
    A no-op outside a launcher.
    """
    if local_rank() is None:
        return
    from datetime import timedelta

    import torch
    from accelerate import PartialState

    if has_gpu():
        torch.cuda.set_device(local_rank())
    PartialState(cpu=not has_gpu(), timeout=timedelta(minutes=timeout_minutes))


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is true on any rank (one all-reduce); `flag` outside a launch.

    Ranks must take the same branch after a rank-local event (an OOM on one GPU, a failed
    student): a rank that moves on alone meets the others in a different collective and hangs.
    """
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    on_gpu = "nccl" in str(dist.get_backend()) and "gloo" not in str(dist.get_backend())
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


class FailedOnAnotherRank(RuntimeError):
    """This rank's work succeeded, but another rank's failed: every rank gives the unit up together."""


def agree_or_raise(error: BaseException | None, what: str) -> None:
    """Raise on every rank when `what` failed on any rank (this rank's own error, if it had one)."""
    if any_rank(error is not None):
        if error is not None:
            raise error
        raise FailedOnAnotherRank(f"{what} failed on another rank (see that rank's output)")


@contextmanager
def main_process_first() -> Iterator[None]:
    """Rank 0 runs the block first, the other ranks after it (and find its work on disk):
    accelerate's `PartialState.main_process_first` (a barrier on the launch's process group); a
    plain block without a launcher."""
    if not launched():
        yield
        return
    from accelerate import PartialState

    with PartialState().main_process_first():
        yield


def resolve_accelerate_config(base: dict[str, Any], trainer: dict[str, Any]) -> dict[str, Any]:
    """The accelerate config for one stage: `base` with the trainer-owned values derived (module
    docstring)."""
    config = yaml.safe_load(yaml.safe_dump(base))  # deep copy
    if config.get("distributed_type") == "FSDP":
        fsdp = config.setdefault("fsdp_config", {})
        fsdp["fsdp_activation_checkpointing"] = bool(trainer.get("gradient_checkpointing", False))
    if config.get("distributed_type") == "DEEPSPEED":
        ds = config.setdefault("deepspeed_config", {})
        for key in TRAINER_OWNED_DEEPSPEED:
            ds.pop(key, None)
    return config


def launch_warnings(recipe: Recipe) -> list[str]:
    """Compute settings that cannot work together, said by `validate` and `plan` before any work."""
    c = recipe.compute
    out: list[str] = []
    if c.launcher == "none" and c.world_size > 1:
        out.append(
            f"compute: {c.nodes} node(s) × {c.gpus_per_node} GPU(s) but launcher: none runs every stage in "
            "one process on one device; set compute.launcher: accelerate (or torchrun)"
        )
    if c.launcher != "accelerate":
        return out
    zero3_qlora: dict[str, list[str]] = {}  # config key → QLoRA stages it runs under ZeRO-3
    for spec in registry.STAGES:
        stage, st = spec.name, getattr(recipe.stages, spec.name, None)
        if spec.training is None or st is None:
            continue
        choice = stage_accelerate_choice(recipe, stage)
        key = f"stages.{stage}.accelerate_config" if st.accelerate_config else "compute.accelerate_config"
        try:
            config = yaml.safe_load(accelerate_config_path(choice).read_text()) or {}
        except OSError as exc:
            out.append(f"{key}: cannot read {choice} ({exc})")
            continue
        engine = config.get("distributed_type")
        if c.gpu == "cpu" and engine in ("FSDP", "DEEPSPEED"):
            out.append(
                f"{key}: {engine} needs GPUs (accelerate builds FSDP/DeepSpeed state on GPU devices only); "
                "on CPU use accelerate_config: ddp or launcher: torchrun"
            )
        quantized = spec.training.method(st) == "qlora"
        ds = config.get("deepspeed_config") or {}
        if (
            quantized
            and engine == "DEEPSPEED"
            and ds.get("zero_stage") == 3
            and not ds.get("zero3_init_flag")
        ):
            zero3_qlora.setdefault(key, []).append(stage)
    for key, stages in zero3_qlora.items():
        out.append(
            f"{key}: QLoRA ({', '.join(stages)}) under DeepSpeed ZeRO-3 needs zero3_init_flag: true "
            "(PEFT's DeepSpeed QLoRA guide); set it or use fsdp2"
        )
    return list(dict.fromkeys(out))


def stage_accelerate_config(recipe: Recipe, run: RunDir, stage: str) -> Path:
    """Write the stage's resolved accelerate config into its folder; return the path."""
    base = yaml.safe_load(accelerate_config_path(stage_accelerate_choice(recipe, stage)).read_text())
    trainer = getattr(recipe.stages, stage).trainer
    path = run.stage_dir(stage) / "accelerate_config.yaml"  # read by `accelerate launch`
    atomic_write_text(path, yaml.safe_dump(resolve_accelerate_config(base, trainer), sort_keys=False))
    return path


def rendezvous(nodes: int) -> dict[str, str] | None:
    """Multi-node: this node's rank and node 0's address for the launcher (`nodes.this_node`:
    Slurm's variables, or NODE_RANK/MASTER_ADDR/MASTER_PORT); None on one node."""
    from verticalft.nodes import this_node

    node = this_node(nodes)
    if node is None:
        return None
    return {"NODE_RANK": str(node.rank), "MASTER_ADDR": node.master_addr, "MASTER_PORT": node.master_port}


def launch_command(
    recipe: Recipe, run: RunDir, stage: str, resume: bool, write_config: bool = True
) -> list[str]:
    """The torchrun / accelerate command that runs `verticalft.worker` for one stage on this node:
    `gpus_per_node` processes here, `nodes × gpus_per_node` in all. `write_config=False` (a node
    other than 0): use the accelerate config node 0 wrote, write nothing."""
    c = recipe.compute
    worker = ["-m", "verticalft.worker", "--run-dir", str(run.root), "--stage", stage] + (
        ["--resume"] if resume else []
    )
    rdzv = rendezvous(c.nodes)
    if c.launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(c.gpus_per_node)]
        if rdzv:
            cmd += ["--nnodes", str(c.nodes), "--node_rank", rdzv["NODE_RANK"]]
            cmd += ["--master_addr", rdzv["MASTER_ADDR"], "--master_port", rdzv["MASTER_PORT"]]
        return [*cmd, *worker]
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(
            stage_accelerate_config(recipe, run, stage)
            if write_config
            else run.stage_dir(stage) / "accelerate_config.yaml"
        ),
        "--num_processes",  # accelerate counts processes over all machines
        str(c.world_size),
        "--num_machines",
        str(c.nodes),
    ]
    if rdzv:
        cmd += ["--machine_rank", rdzv["NODE_RANK"], "--main_process_ip", rdzv["MASTER_ADDR"]]
        cmd += ["--main_process_port", rdzv["MASTER_PORT"]]
    if not has_gpu():
        cmd.append("--cpu")
    return [*cmd, *worker]


def has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()
