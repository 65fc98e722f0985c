"""The stages of a run, in order, and the groups other modules ask about — one list for all."""

from __future__ import annotations

STAGE_ORDER = ("tiny_models", "curate", "cpt", "sft", "dpo", "distill", "eval", "bench", "cost", "route")
MODEL_STAGES = ("cpt", "sft", "dpo")  # each leaves the next teacher (a model folder or an adapter)
TRAINING_STAGES = (*MODEL_STAGES, "distill")  # GPU training; launched with torchrun/accelerate
SERVING_STAGES = ("eval", "bench")  # GPU time on the serving side
