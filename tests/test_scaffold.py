import shutil
from pathlib import Path

import pytest

from verticalft.recipe import load_recipe
from verticalft.scaffold import scaffold_vertical

ROOT = Path(__file__).resolve().parents[1]


def test_new_vertical_validates_and_points_at_its_own_data(tmp_path):
    shutil.copytree(ROOT / "recipes", tmp_path / "recipes")
    shutil.copytree(ROOT / "data_pipelines" / "finance", tmp_path / "data_pipelines" / "finance")
    created = scaffold_vertical("legal", "finance", tmp_path)
    assert created == [tmp_path / "recipes/legal.yaml", tmp_path / "data_pipelines/legal"]
    r = load_recipe(tmp_path / "recipes/legal.yaml", "tiny")
    assert r.name == "legal"
    assert r.data.corpus[0].path == "data_pipelines/legal/sample/corpus.jsonl"
    assert (tmp_path / "data_pipelines/legal/sample/corpus.jsonl").is_file()
    # The sample builder comes along; the finance-only EDGAR connector does not.
    assert sorted(p.name for p in (tmp_path / "data_pipelines/legal").iterdir()) == [
        "build_sample.py",
        "sample",
    ]
    text = (tmp_path / "recipes/legal.yaml").read_text()
    assert "data_pipelines/legal/data/" in text
    # nothing of finance's own comes along: no comment naming its connector, no noise labels of
    # its documents (a legal corpus would be scored against them)
    assert "edgar.py" not in text and "EDGAR filings" not in text
    assert "license: {allow: [sec-edgar-public]}" in text  # settings stay: the author edits them
    assert not (tmp_path / "data_pipelines/legal/sample/noise_labels.jsonl").exists()
    with pytest.raises(ValueError, match="already exists"):
        scaffold_vertical("legal", "finance", tmp_path)
    with pytest.raises(ValueError, match="not a valid vertical name"):
        scaffold_vertical("Legal-Docs", "finance", tmp_path)


def test_new_vertical_does_not_keep_the_templates_description_or_keywords(tmp_path):
    # Regression: `verticalft new legal` kept finance's description and its keyword relevance
    # filter, which would keep finance documents and drop legal ones.
    shutil.copytree(ROOT / "recipes", tmp_path / "recipes")
    shutil.copytree(ROOT / "data_pipelines" / "finance", tmp_path / "data_pipelines" / "finance")
    scaffold_vertical("legal", "finance", tmp_path)
    text = (tmp_path / "recipes/legal.yaml").read_text()
    assert "EBITDA" not in text and "Filings, earnings calls" not in text
    assert "keywords: []   # TODO: words a legal document uses" in text
    for profile in ("full", "tiny"):  # still validates, and the filter is there with no keywords
        r = load_recipe(tmp_path / "recipes/legal.yaml", profile)
        assert r.description == "TODO: what the legal vertical covers (was finance's)"
        relevance = [f["relevance"] for f in r.stages.curate.model_dump()["filters"] if "relevance" in f]
        assert relevance == [{"keywords": [], "patterns": [], "min_hits_per_1k_words": 2.0}]
