"""The launch path of the shipped recipes, checked through accelerate's and transformers' own code
(no GPU here: accelerate only builds FSDP/DeepSpeed state on GPU devices, so the configs are
resolved the way `accelerate launch` does it and handed to the plugins and TrainingArguments)."""

from pathlib import Path

import pytest
import yaml

from verticalft.launch import launch_command
from verticalft.recipe import load_recipe
from verticalft.rundir import RunDir
from verticalft.stages.base import StageContext
from verticalft.stages.training import trainer_config

ROOT = Path(__file__).resolve().parents[1]
FINANCE = ROOT / "recipes/finance.yaml"


@pytest.fixture(autouse=True)
def rendezvous(monkeypatch):
    """finance.yaml runs on 8 nodes: this process plays node 3."""
    for key, value in {"NODE_RANK": "3", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(key, value)


def _accelerate_args(config: Path, processes: int):
    """What `accelerate launch --config_file <config>` makes of the file (its own parser)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    argv = ["--config_file", str(config), "--num_processes", str(processes), "train.py"]
    args, _, _ = _validate_launch_command(launch_command_parser().parse_args(argv))
    return args


def _config_of(cmd: list[str]) -> Path:
    return Path(cmd[cmd.index("--config_file") + 1])


@pytest.mark.parametrize("stage", ["cpt", "sft", "dpo", "distill"])
def test_fsdp2_stages_checkpoint_activations_once(stage, tmp_path, monkeypatch):
    # finance.yaml with fsdp2 for every stage (it ships fsdp2 for cpt only) and trainer
    # gradient_checkpointing: true in every stage. transformers' Trainer.__init__ raises when the
    # FSDP plugin's activation_checkpointing and TrainingArguments.gradient_checkpointing are both true.
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env
    from trl import DPOConfig, SFTConfig

    recipe = load_recipe(FINANCE, overrides=["compute.accelerate_config=fsdp2"])
    run = RunDir(tmp_path)
    assert getattr(recipe.stages, stage).trainer["gradient_checkpointing"] is True
    config = _config_of(launch_command(recipe, run, stage, resume=False))
    assert config.parent == tmp_path / stage  # what ran is on disk, per stage
    env = prepare_multi_gpu_env(_accelerate_args(config, 8))
    for key, value in env.items():
        if key.startswith(("FSDP_", "ACCELERATE_")):
            monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2
    assert plugin.activation_checkpointing is True  # the trainer's wish, done by FSDP
    config_cls = DPOConfig if stage == "dpo" else SFTConfig  # the class each stage builds
    args = trainer_config(StageContext(recipe, run, stage), config_cls, {}, {})
    assert args.gradient_checkpointing is False
    assert not (plugin.activation_checkpointing and args.gradient_checkpointing)


def test_fsdp2_follows_a_stage_without_checkpointing(tmp_path):
    recipe = load_recipe(
        FINANCE,
        overrides=["compute.accelerate_config=fsdp2", "stages.sft.trainer.gradient_checkpointing=false"],
    )
    config = _config_of(launch_command(recipe, RunDir(tmp_path), "sft", resume=False))
    assert _accelerate_args(config, 8).fsdp_activation_checkpointing is False


def test_deepspeed_leaves_trainer_owned_values_to_the_trainer(tmp_path, monkeypatch):
    # finance's SFT accumulates 8 steps; a DeepSpeed config pinning 1 is DeepSpeed's config
    # mismatch error. accelerate turns an absent value into "auto", which transformers fills.
    from accelerate.utils import DeepSpeedPlugin

    recipe = load_recipe(FINANCE, overrides=["compute.accelerate_config=deepspeed-zero3"])
    config = _config_of(launch_command(recipe, RunDir(tmp_path), "sft", resume=False))
    args = _accelerate_args(config, 8)
    assert args.use_deepspeed and args.zero_stage == 3
    for key in ("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "ACCELERATE_GRADIENT_CLIPPING"):
        monkeypatch.delenv(key, raising=False)
        value = getattr(args, key.removeprefix("ACCELERATE_").lower())
        if value is not None:  # what accelerate launch would export
            monkeypatch.setenv(key, str(value))
    ds = DeepSpeedPlugin(zero_stage=3).deepspeed_config
    trainer = recipe.stages.sft.trainer
    assert ds["gradient_accumulation_steps"] in ("auto", trainer["gradient_accumulation_steps"])
    assert ds["gradient_clipping"] in ("auto", trainer.get("max_grad_norm", 1.0))


def test_a_users_own_accelerate_config_is_resolved_the_same_way(tmp_path):
    own = tmp_path / "mine.yaml"
    own.write_text(
        yaml.safe_dump(
            {
                "distributed_type": "FSDP",
                "fsdp_config": {"fsdp_version": 2, "fsdp_activation_checkpointing": True},
                "num_machines": 1,
            }
        )
    )
    recipe = load_recipe(
        FINANCE,
        overrides=[f"compute.accelerate_config={own}", "stages.dpo.trainer.gradient_checkpointing=false"],
    )
    resolved = yaml.safe_load(
        _config_of(launch_command(recipe, RunDir(tmp_path / "run"), "dpo", False)).read_text()
    )
    assert resolved["fsdp_config"] == {"fsdp_version": 2, "fsdp_activation_checkpointing": False}
    assert (
        yaml.safe_load(own.read_text())["fsdp_config"]["fsdp_activation_checkpointing"] is True
    )  # untouched


@pytest.fixture
def on_gpus(monkeypatch):
    """Pretend this process is a launched rank on a bf16 GPU node (only the placement decision is
    tested: nothing is loaded)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "8")
    for key in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"):
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def test_qlora_under_ddp_loads_each_rank_onto_its_own_gpu(on_gpus):
    import torch

    from verticalft.models import load_kwargs

    kw = load_kwargs("nf4")
    assert kw["device_map"] == {"": 3}  # TRL's get_kbit_device_map: {"": local process index}
    assert kw["quantization_config"].bnb_4bit_quant_storage == torch.uint8
    assert "device_map" not in load_kwargs("none")  # 16-bit models are placed by the Trainer


@pytest.mark.parametrize("engine", ["ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"])
def test_qlora_under_sharding_stores_4bit_weights_in_the_compute_dtype(on_gpus, engine):
    import torch

    from verticalft.models import load_kwargs

    on_gpus.setenv(engine, "true")
    kw = load_kwargs("nf4")
    q = kw["quantization_config"]
    # bitsandbytes' FSDP-QLoRA guide: quant storage = the dtype of the other (16-bit) parameters
    assert q.bnb_4bit_quant_storage == q.bnb_4bit_compute_dtype == torch.bfloat16
    if engine == "ACCELERATE_USE_FSDP":
        # PEFT's FSDP-QLoRA guide: each rank quantizes onto its own GPU (bitsandbytes otherwise
        # uses torch.cuda.current_device(), GPU 0 on every rank: 8 models on one card)
        assert kw["device_map"] == {"": 3}
    else:
        assert "device_map" not in kw  # transformers refuses a device_map under ZeRO-3


def test_full_parameter_fsdp_loads_the_fp32_masters_accelerate_would_cast_to(on_gpus):
    import torch

    from verticalft.models import load_kwargs

    on_gpus.setenv("ACCELERATE_USE_FSDP", "true")
    # every weight trains: fp32 at load, so accelerate's FSDP2 upcast has nothing to write on the
    # ranks that hold empty tensors (models.load_kwargs)
    assert load_kwargs("none", full=True)["dtype"] == torch.float32
    assert load_kwargs("none")["dtype"] == torch.bfloat16  # LoRA: the frozen base stays 16-bit
    assert load_kwargs("none", inference=True, full=True)["dtype"] == torch.bfloat16  # a teacher
    on_gpus.delenv("ACCELERATE_USE_FSDP")
    assert load_kwargs("none", full=True)["dtype"] == torch.bfloat16  # DDP keeps the model's dtype


def test_a_teacher_loads_whole_onto_its_ranks_gpu(on_gpus):
    from verticalft.models import load_kwargs

    assert load_kwargs("none", inference=True)["device_map"] == {"": 3}
    on_gpus.delenv("LOCAL_RANK")  # one process on a GPU machine: the first GPU, not the CPU
    assert load_kwargs("none", inference=True)["device_map"] == {"": 0}


def test_an_unlaunched_cpu_process_loads_as_before(monkeypatch):
    from verticalft.models import load_kwargs

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    kw = load_kwargs("nf4")
    assert "device_map" not in kw and kw["trust_remote_code"] is False


def test_gpus_mean_one_thing_to_the_launcher_plan_and_cost(tmp_path, monkeypatch):
    # finance.yaml: 8 nodes × 8 GPUs. Before: `num_gpus: 64` made accelerate start 64 processes on
    # one node, torchrun ignored it, and cost charged num_gpus × nproc_per_node.
    from verticalft.plan import plan_recipe

    recipe = load_recipe(FINANCE)
    assert (recipe.compute.nodes, recipe.compute.gpus_per_node, recipe.compute.world_size) == (8, 8, 64)
    cmd = launch_command(recipe, RunDir(tmp_path), "cpt", resume=False)
    args = _accelerate_args(_config_of(cmd), 64)
    flags = {flag: cmd[cmd.index(flag) + 1] for flag in cmd if flag.startswith("--") and flag != "--cpu"}
    assert (
        flags["--num_processes"] == "64" and flags["--num_machines"] == "8"
    )  # accelerate: over all machines
    assert flags["--machine_rank"] == "3" and flags["--main_process_ip"] == "10.0.0.1"
    assert args.num_processes == 64
    torchrun = launch_command(
        load_recipe(FINANCE, overrides=["compute.launcher=torchrun"]), RunDir(tmp_path), "sft", False
    )
    assert torchrun[torchrun.index("--nproc_per_node") + 1] == "8"  # per node
    assert (
        torchrun[torchrun.index("--nnodes") + 1] == "8" and torchrun[torchrun.index("--node_rank") + 1] == "3"
    )
    plan = plan_recipe(recipe)
    cpt = plan.stages[0]  # full CPT: 16 bytes/parameter of trainable state, sharded over the 64
    assert cpt.memory["trainable_state"] == pytest.approx(cpt.params * 16 / 1e9 / 64, rel=1e-3)
    assert recipe.compute.training_gpus == 64
    assert load_recipe(FINANCE, "tiny").compute.training_gpus == 1  # launcher none: one device


def test_several_nodes_without_a_rendezvous_is_a_clear_error(tmp_path, monkeypatch):
    for key in ("NODE_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MASTER_PORT", "29500")
    from verticalft.nodes import NodeError

    with pytest.raises(NodeError, match="compute.nodes=8: set NODE_RANK, MASTER_ADDR on every node"):
        launch_command(load_recipe(FINANCE), RunDir(tmp_path), "cpt", resume=False)


def test_the_old_gpu_keys_say_what_replaced_them():
    from verticalft.recipe import RecipeError

    with pytest.raises(RecipeError) as err:
        load_recipe(FINANCE, overrides=["compute.num_gpus=64", "compute.nproc_per_node=8"])
    text = str(err.value)
    assert "compute.num_gpus: unknown key (did you mean 'nodes' and 'gpus_per_node" in text
    assert "compute.nproc_per_node: unknown key (did you mean 'gpus_per_node'?)" in text


def test_settings_that_cannot_work_together_are_said_before_any_work():
    from verticalft.launch import launch_warnings
    from verticalft.plan import plan_recipe

    assert launch_warnings(load_recipe(FINANCE)) == []  # the shipped recipe: 8 × 8 H100, fsdp2
    on_cpu = load_recipe(FINANCE, overrides=["compute.gpu=cpu"])
    assert any("FSDP needs GPUs" in w for w in launch_warnings(on_cpu))
    assert any("FSDP needs GPUs" in w for w in plan_recipe(on_cpu).warnings)
    unlaunched = load_recipe(FINANCE, overrides=["compute.launcher=none"])
    assert any("launcher: none runs every stage in one process" in w for w in launch_warnings(unlaunched))


def test_qlora_under_zero3_needs_the_init_flag(tmp_path):
    from verticalft.launch import launch_warnings

    config = yaml.safe_load((ROOT / "src/verticalft/accelerate_configs/deepspeed-zero3.yaml").read_text())
    assert config["deepspeed_config"]["zero3_init_flag"] is True  # shipped right
    config["deepspeed_config"]["zero3_init_flag"] = False
    own = tmp_path / "zero3.yaml"
    own.write_text(yaml.safe_dump(config))
    recipe = load_recipe(FINANCE, overrides=[f"compute.accelerate_config={own}"])
    (warning,) = launch_warnings(recipe)
    assert "QLoRA (sft, dpo, distill) under DeepSpeed ZeRO-3 needs zero3_init_flag: true" in warning


def test_each_stage_runs_under_the_config_that_fits_it(tmp_path):
    """finance.yaml: full-parameter CPT of the 32B teacher sharded (fsdp2); the QLoRA stages, which
    fit one H100 per rank by the plan, plain data parallel (ddp). Before: fsdp2 for every stage."""
    from verticalft.plan import plan_recipe

    recipe = load_recipe(FINANCE)
    engines = {
        stage: yaml.safe_load(_config_of(launch_command(recipe, RunDir(tmp_path), stage, False)).read_text())[
            "distributed_type"
        ]
        for stage in ("cpt", "sft", "dpo", "distill")
    }
    assert engines == {"cpt": "FSDP", "sft": "MULTI_GPU", "dpo": "MULTI_GPU", "distill": "MULTI_GPU"}
    plan = plan_recipe(recipe)
    assert all(s.fits for s in plan.stages)
    # what fits decides: CPT unsharded would need every weight, gradient and Adam state per GPU
    (cpt,) = [
        s
        for s in plan_recipe(load_recipe(FINANCE, overrides=["stages.cpt.accelerate_config=ddp"])).stages
        if s.stage == "cpt"
    ]
    assert not cpt.fits and cpt.memory_gb_per_gpu > 16 * 32e9 / 1e9
    (cache,) = [n for n in plan.notes if "teacher top-k cache: sft takes" in n]
    # 1.53 GPU-hours of teacher forward over 64 ranks: 1.53 × 60 / 64 ≈ 1.4 minutes each
    assert "built in parts by each of the 64 ranks" in cache and "~1.4 min wall" in cache


def test_a_cache_longer_than_the_barrier_timeout_is_said_before_any_work():
    from verticalft.plan import plan_recipe

    recipe = load_recipe(FINANCE, overrides=["compute.timeout_minutes=1"])
    assert any("longer than compute.timeout_minutes=1" in w for w in plan_recipe(recipe).warnings)
    assert not any("timeout_minutes" in w for w in plan_recipe(load_recipe(FINANCE)).warnings)
