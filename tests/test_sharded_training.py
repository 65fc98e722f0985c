"""The training skeleton under a sharding engine (FSDP2 / ZeRO-3), on CPU: no GPU here, so the
engine itself cannot run; what runs is transformers' own Trainer with the decisions the skeleton
takes under it."""

from pathlib import Path

import pytest
import torch

from verticalft.recipe import load_recipe
from verticalft.rundir import RunDir
from verticalft.stages.base import StageContext

ROOT = Path(__file__).resolve().parents[1]
FINANCE = ROOT / "recipes/finance.yaml"


def _tiny_trainer(tmp_path):
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

    from verticalft.models import train_tiny_tokenizer

    tok = train_tiny_tokenizer(["revenue rose in the quarter", "net income fell"] * 20, 300)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=1, num_key_value_heads=1, head_dim=64,
    )  # fmt: skip
    model = LlamaForCausalLM(cfg)
    args = TrainingArguments(output_dir=str(tmp_path / "ckpt"), use_cpu=True, report_to=[], max_steps=1)
    data = Dataset.from_list([{"input_ids": [1, 2, 3, 4], "labels": [1, 2, 3, 4]}] * 4)
    return Trainer(model=model, args=args, train_dataset=data), tok


def test_the_final_save_under_fsdp_writes_the_whole_model(tmp_path, monkeypatch):
    """fsdp2.yaml checkpoints with SHARDED_STATE_DICT; transformers' `Trainer.save_model` writes
    nothing under FSDP unless the state dict is FULL, so the stage's model folder stayed empty."""
    from accelerate.utils import FullyShardedDataParallelPlugin

    from verticalft.stages.training import save_outputs

    trainer, tok = _tiny_trainer(tmp_path)
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, state_dict_type="SHARDED_STATE_DICT")
    monkeypatch.setattr(trainer.accelerator.state, "fsdp_plugin", plugin, raising=False)
    monkeypatch.setattr(trainer, "is_fsdp_enabled", True)  # what accelerate sets under FSDP
    ctx = StageContext(load_recipe(FINANCE, "tiny"), RunDir(tmp_path / "run"), "cpt")
    out = save_outputs(ctx, trainer, tok, "base", is_peft=False, merge=False)
    assert "FULL_STATE_DICT" in str(plugin.state_dict_type)
    saved = Path(out["model"]) / "model.safetensors"
    assert saved.is_file()
    from safetensors.torch import load_file

    weights = load_file(saved)
    for name, param in trainer.model.state_dict().items():
        if name in weights:
            assert torch.equal(weights[name], param)
    assert set(weights) >= {"model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight"}


@pytest.mark.slow
def test_sharded_runs_evaluate_only_a_prepared_model(tmp_path, monkeypatch):
    """Under FSDP2 accelerate refuses to prepare a model without its optimizer, which `evaluate()`
    before `train()` does ("a model and optimizer must be passed together"). The held-out loss
    before training now comes from `eval_on_start` (inside train(), after prepare)."""
    from transformers import Trainer

    from verticalft.pipeline import run_recipe

    calls: list[tuple[int, int]] = []
    evaluate = Trainer.evaluate

    def spy(self, *a, **k):
        calls.append((len(self.accelerator._models), self.state.global_step))
        return evaluate(self, *a, **k)

    monkeypatch.setattr(Trainer, "evaluate", spy)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch` sets with fsdp2.yaml
    recipe = load_recipe(FINANCE, "tiny", overrides=["stages.cpt.trainer.max_steps=3"])
    run = RunDir(tmp_path / "run")
    run_recipe(recipe, run, only=["tiny_models", "cpt"], echo=lambda s: None)
    assert len(calls) == 2 and all(prepared > 0 for prepared, _ in calls), calls
    assert [step for _, step in calls] == [0, 3]  # before the first step, after the last
    metrics = run.record("cpt").metrics
    assert metrics["eval_loss_before"] > metrics["eval_loss"] > 0


def test_a_sharded_model_is_scored_on_every_rank_and_reported_by_rank_0(monkeypatch):
    """generate() on a sharded module gathers weights in every forward: rank 0 alone deadlocked
    waiting for ranks that had moved on. Every rank generates; rank 0 alone returns the score."""
    import verticalft.scoring as scoring
    from verticalft.stages.training import quick_eval

    ran: list[str] = []

    def evaluate_model(model, tokenizer, items, **settings):
        ran.append(f"rank {__import__('os').environ['RANK']}: {len(items)} items")
        return {"score": 0.5}

    monkeypatch.setattr(scoring, "evaluate_model", evaluate_model)
    ctx = StageContext(load_recipe(FINANCE, "tiny", overrides=["evaluation.max_items=4"]), None, "sft")
    monkeypatch.setenv("RANK", "1")
    assert quick_eval(ctx, None, None) is None and ran == []  # unsharded: rank 0 alone
    assert quick_eval(ctx, None, None, every_rank=True) is None and ran == ["rank 1: 4 items"]
    monkeypatch.setenv("RANK", "0")
    assert quick_eval(ctx, None, None, every_rank=True) == {"score": 0.5}
