import pytest
from sample_helpers import rows

from verticalft.curation.decontam import Contamination, EvalIndex, ngrams

# A standard lease clause (15 words: three 13-grams) that many documents share, and an eval item
# that quotes it before asking its own question.
CLAUSE = "This lease shall terminate automatically if the premises are destroyed by fire or other casualty."
QUESTION = (
    "Given that clause and the fire on 12 March that destroyed the Oak Street unit, what happens to "
    "the tenant's obligation to pay the April rent of $2,450 under this agreement?"
)
ITEM = f"{CLAUSE} {QUESTION}"


def test_an_eval_item_pasted_into_a_training_document_is_caught():
    items = [(r["id"], r["prompt"]) for r in rows("finance", "eval.jsonl")]
    leaked_id, leaked = items[17]
    index = EvalIndex.build(items)
    doc = f"Study notes, week 3.\n{leaked.upper()} (see the answer key)\nMore notes follow here."
    hit = index.match(doc)
    assert hit is not None
    assert hit.eval_id == leaked_id and hit.overlap == 1.0
    assert hit.ngram in ngrams(leaked, 13)
    assert index.match("Study notes, week 3. Nothing from any test here at all, only prose.") is None


def test_sharing_only_template_wording_is_not_contamination():
    index = EvalIndex.build([("re-eval-1", ITEM)])
    lease = f"COMMERCIAL LEASE. 4. Termination. {CLAUSE} 5. Parking. Two spaces are assigned to Tenant."
    shared = ngrams(lease, 13) & ngrams(ITEM, 13)
    assert len(shared) == 3 and len(ngrams(ITEM, 13)) == 36  # 3/36 of the item: far below 0.5
    assert index.match(lease) is None
    assert index.match(f"Exam prep: {ITEM}") == Contamination("re-eval-1", 1.0, index.match(ITEM).ngram)


def test_min_overlap_zero_is_the_any_shared_ngram_rule():
    strict = EvalIndex.build([("re-eval-1", ITEM)], min_overlap=0)
    lease = f"COMMERCIAL LEASE. 4. Termination. {CLAUSE} 5. Parking. Two spaces are assigned to Tenant."
    hit = strict.match(lease)
    assert hit is not None and hit.eval_id == "re-eval-1"
    assert hit.overlap == pytest.approx(3 / 36)
    assert hit.ngram in ngrams(CLAUSE, 13)
    # one shared 13-gram is enough; twelve shared words are not
    twelve = " ".join(CLAUSE.split()[:12])
    assert strict.match(f"Preamble words here. {twelve} Different ending altogether.") is None


def test_items_shorter_than_n_words_match_only_as_a_whole():
    index = EvalIndex.build([("re-eval-7", "What is the cap rate?")])
    assert ngrams("What is the cap rate?", 13) == {"what is the cap rate"}
    hit = index.match("WHAT is the cap-rate")  # the whole text, normalised, is the item
    assert hit == Contamination("re-eval-7", 1.0, "what is the cap rate")
    # Inside a longer text the item is never a 13-gram of it, so it is not matched there.
    assert index.match("Question: what is the cap rate? The property sells for $2 million.") is None
    assert index.match("what is the cap rate") is not None and index.match("what is the") is None


def test_the_best_match_is_the_highest_overlap_then_the_smallest_id():
    words = [f"w{i}" for i in range(60)]
    whole = " ".join(words[:20])  # 8 13-grams
    half = " ".join(words[12:40])  # 16 13-grams, 8 of them (w12..w31) inside `doc`
    doc = " ".join(words[:32])
    index = EvalIndex.build([("a-half", half), ("b-whole", whole), ("c-whole", whole)])
    hit = index.match(doc)
    assert hit is not None and hit.eval_id == "b-whole" and hit.overlap == 1.0  # b before c: same overlap
    assert EvalIndex.build([("a-half", half)]).match(doc).overlap == pytest.approx(8 / 16)
    assert EvalIndex.build([("a-half", half)], min_overlap=0.6).match(doc) is None


def test_ngrams_common_in_training_data_stop_counting_but_a_pasted_item_still_matches():
    # A question that opens with the standard clause: 3 of its 18 13-grams lie inside it.
    item = f"{CLAUSE} Does it apply to the Elm Road unit destroyed in the May fire last year?"
    index = EvalIndex.build([("re-eval-2", item)], min_overlap=0.15)
    leases = [f"LEASE {k}. Termination. {CLAUSE} Parking: {k} spaces." for k in range(12)]
    assert index.match(leases[0]) is not None  # raw n-grams: the clause alone is 3 of 18, a hit
    pruned = index.without_common(index.doc_frequency(leases), max_docs=10)
    assert all(pruned.match(doc) is None for doc in leases)  # standard wording is not a leak
    assert pruned.match(f"Quiz: {item}").overlap == 1.0  # the item's own words still are
    assert pruned.unmatchable == []
    assert EvalIndex.build([("only-clause", CLAUSE)]).without_common(
        index.doc_frequency(leases), 10
    ).unmatchable == ["only-clause"]
    assert index.without_common(index.doc_frequency(leases), None) is index
