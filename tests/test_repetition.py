import pytest
from sample_helpers import DOMAINS, noise_kinds, rows

from verticalft.curation.english_words import words
from verticalft.curation.repetition import STRUCTURED_RULES, RepetitionRules, gopher_repetition

S1 = "Quarterly revenue rose because demand for the new product line held up in every region."
S2 = "Management expects margins to improve next year as freight costs ease and pricing stays firm."
S3 = "The board approved a modest dividend increase and a buyback of up to two hundred million dollars."
S4 = "Cash on hand covers planned capital spending, and no debt matures before the end of the decade."
PROSE = " ".join([S1, S2, S3, S4])
NO_NGRAM_RULES = RepetitionRules(top_n_grams=(), dup_n_grams=())


def stuffed(phrase: str, every: int) -> str:
    """PROSE with `phrase` inserted after every `every` words."""
    out = []
    for i, w in enumerate(PROSE.split()):
        out.append(w)
        if i % every == every - 1:
            out.append(phrase)
    return " ".join(out)


# A filing excerpt the way data_pipelines/finance/edgar.py writes one: a row per line.
FILING = "\n".join(
    [
        "Results of Operations",
        S1 + " " + S2,
        "| Consolidated Results of Operations (in millions) |  |  | ",
        "|  | 2024 | 2023 | ",
        "| Net revenue | $1,482.6 | $1,323.8 | ",
        "| Cost of revenue | 701.4 | 640.2 | ",
        "| Total operating expenses | 516.6 | 480.3 | ",
        "| Operating income | 264.6 | 203.3 | ",
        "| Net income | $198.1 | $151.4 | ",
        "| Total assets | $4,212.0 | $3,988.5 | ",
        "| Total liabilities | $2,101.7 | $2,050.2 | ",
        S3 + " " + S4,
    ]
)
# A practice sheet (as the finance sample has them): question stems recur, which is how forms are.
WORKSHEET = """Analyst practice worksheet, worked answers:
Categorise this bank transaction: 90.38 USD POS 6810 SUBWAY
Category: dining
Categorise this bank transaction: 555.00 USD CHECKCARD 3433 STARBUCKS
Category: dining
Categorise this bank transaction: 601.20 USD POS 8633 BLUE DOOR ELECTRIC
Category: utilities
Net revenue was $54 million and operating expenses were $25 million. What was operating income, in $ millions?
Answer: 29
Did net revenue increase or decrease? Excerpt: Crescent Pharma: net revenue was $82.1 million a year earlier \
and $848.5 million this year, so it rose.
Answer: increase"""


def test_clean_prose_passes():
    assert gopher_repetition(PROSE) is None
    assert gopher_repetition("\n\n".join([S1, S2, S3, S4])) is None


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "empty"),
        ("\n\n".join([S1, S2, S1, S1]), "dup_para_frac"),  # 2 of 4 paragraphs repeat
        ("\n\n".join(["Overview.", PROSE, "Outlook.", "Risks.", PROSE]), "dup_para_char_frac"),  # 1 of 5
        ("\n".join([S1, S2, S1, S3, S1]), "dup_line_frac"),
        ("\n".join(["Overview.", PROSE, "Outlook.", "Risks.", PROSE]), "dup_line_char_frac"),
        (PROSE + " cheap loans" * 40, "top_2_gram"),
        (stuffed("quarterly dividend statements", 12), "top_3_gram"),
        (stuffed("quarterly dividend payment statements", 18), "top_4_gram"),
        (PROSE + " " + S2, "duplicated_5_n_grams"),  # one sentence twice
        ("Revenue rose.", "top_2_gram"),  # very short: its first 2-gram alone is a large share
    ],
)
def test_rules_and_reason_names(text, reason):
    assert gopher_repetition(text) == reason


def test_each_rule_can_be_turned_off():
    text = "\n\n".join([S1, S2, S1, S1])
    assert gopher_repetition(text, RepetitionRules(dup_para_frac=None)) == "dup_para_char_frac"
    off = RepetitionRules(
        dup_para_frac=None, dup_para_char_frac=None, dup_line_frac=None, dup_line_char_frac=None
    )
    assert gopher_repetition(text, off) == "top_3_gram"  # "Quarterly revenue rose" x3: 18.3%
    assert gopher_repetition(text, RepetitionRules(None, None, None, None, (), ())) is None


def test_duplicated_ngrams_count_greedily_skipping_n_words_as_datatrove():
    # 2-grams of "aa bb aa bb aa bb", joined without a space: aabb bbaa aabb bbaa aabb. datatrove counts
    # the repeat at word 2 (4 chars), jumps to word 4, counts again: 8 of 17 characters (0.47). Every
    # repeated occurrence would be 12 (0.71): a limit between the two tells the rules apart.
    text = "aa bb aa bb aa bb"
    assert gopher_repetition(text, RepetitionRules(None, None, None, None, (), ((2, 0.6),))) is None
    assert (
        gopher_repetition(text, RepetitionRules(None, None, None, None, (), ((2, 0.45),)))
        == "duplicated_2_n_grams"
    )
    # Joined without a separator, "ab c" and "a bc" are the same n-gram (3 of 11 characters).
    assert (
        gopher_repetition("ab c x a bc", RepetitionRules(None, None, None, None, (), ((2, 0.25),)))
        == "duplicated_2_n_grams"
    )


def test_top_ngram_ties_go_to_the_first_seen_as_most_common_does():
    # "x y" and "longer phrase" both occur twice; the first seen ("x y", 3 chars) is the top one:
    # 6 of 41 characters (0.15), not 26 (0.63).
    text = "x y q x y r longer phrase s longer phrase"
    assert gopher_repetition(text, RepetitionRules(None, None, None, None, ((2, 0.2),), ())) is None
    assert gopher_repetition(text, RepetitionRules(None, None, None, None, ((2, 0.1),), ())) == "top_2_gram"


def test_ngrams_are_counted_over_spacy_style_words():
    assert words("Apple Inc. didn't pay $5M (in millions): see e-mail.") == [
        "Apple", "Inc.", "did", "n't", "pay", "$", "5", "M", "(", "in", "millions", "):", "see", "e", "-",
        "mail", ".",
    ]  # fmt: skip


def test_finance_preset_keeps_tables_and_forms_but_not_spam():
    assert gopher_repetition(FILING) is None  # rows differ in their figures: the web defaults keep them
    assert gopher_repetition(FILING, STRUCTURED_RULES) is None
    assert gopher_repetition(WORKSHEET) == "top_4_gram"  # "Categorise this bank transaction": 17%
    assert gopher_repetition(WORKSHEET, STRUCTURED_RULES) is None
    assert gopher_repetition("\n".join([S1, S2, S1, S3, S1]), STRUCTURED_RULES) == "dup_line_frac"
    assert gopher_repetition(PROSE + " cheap loans" * 40, STRUCTURED_RULES) == "top_2_gram"
    assert gopher_repetition(PROSE + " " + PROSE, STRUCTURED_RULES) == "duplicated_5_n_grams"


@pytest.mark.parametrize("domain", DOMAINS)
def test_finance_preset_keeps_clean_domain_documents(domain):
    kinds = noise_kinds(domain)
    clean = [doc["text"] for doc in rows(domain, "corpus.jsonl") if kinds.get(doc["id"], "clean") == "clean"]
    assert sum(bool(gopher_repetition(t, STRUCTURED_RULES)) for t in clean) <= 0.01 * len(clean)
    # The web limits drop templated domain documents by the dozen: why the preset exists (finance ledgers;
    # real-estate prose is closer to web text, so there the preset only has to do no harm).
    web = sum(bool(gopher_repetition(t)) for t in clean)
    assert sum(bool(gopher_repetition(t, STRUCTURED_RULES)) for t in clean) <= web
    if domain == "finance":
        assert web > 0.08 * len(clean)
