import pytest
from sample_helpers import DOMAINS, noise_kinds, rows

from verticalft.curation.fineweb import STRUCTURED_RULES, FineWebRules, fineweb_quality

S1 = "Quarterly revenue rose because demand for the new product line held up in every region."
S2 = "Management expects margins to improve next year as freight costs ease and pricing stays firm."
S3 = "The board approved a modest dividend increase and a buyback of up to two hundred million dollars."
S4 = "Cash on hand covers planned capital spending, and no debt matures before the end of the decade."
LINES = "\n".join([S1, S2, S3, S4])

# A statement the way data_pipelines/finance/edgar.py writes one: headings and a row per line, no full
# stops, several rows shorter than 30 characters.
STATEMENT = "\n".join(
    [
        "CONSOLIDATED BALANCE SHEETS",
        "(in millions)",
        "|  | 2024 | 2023 | ",
        "| Cash | $612.4 | $540.9 | ",
        "| Receivables, net | 388.0 | 351.2 | ",
        "| Inventories | 402.7 | 377.5 | ",
        "| Total current assets | 1,403.1 | 1,269.6 | ",
        "| Property and equipment, net | 655.0 | 610.4 | ",
        "| Goodwill | 812.3 | 812.3 | ",
        "| Total assets | $4,212.0 | $3,988.5 | ",
        "| Accounts payable | 210.8 | 198.1 | ",
        "| Long-term debt | 900.0 | 950.0 | ",
        "| Total liabilities | $2,101.7 | $2,050.2 | ",
    ]
)
# A ledger, as the finance sample has them: line items that end in a category, not a full stop.
LEDGER = "\n".join(
    [
        "Statement of account, categorised transactions:",
        "393.58 USD CHECKCARD 2957 TRADER JOES -> groceries",
        "736.33 USD CHECKCARD 5185 HILTON HOTELS -> travel",
        "523.21 USD DEBIT CARD 5412 CON EDISON -> utilities",
        "649.17 USD CHECKCARD 2286 HARBOR PENALTY FEE -> fees",
        "199.01 USD POS 2436 PAYCHEX -> payroll",
    ]
)
RISKS = "\n".join(
    [
        "Risk Factors",
        "• Our revenue depends on a small number of large semiconductor customers",
        "• Component shortages could delay shipments and raise our costs",
        "• Changes in export rules may limit sales to customers in some countries",
        "• We may not realize the expected benefits of the Bergen Signal acquisition",
    ]
)
MENU = "\n".join(
    ["Home", "About us", "Products", "Careers", "Contact", "Privacy", "Sitemap", "Login", "Help", S1]
)
SHORT_SENTENCES = "\n".join(
    ["The bank held its rate.", "Our team grew in May.", "Rent rose with demand.", "The firm paid a fee.", S1]
)
# Two long words a line, a full stop on every third: lines are long, but words per line few.
LONG_WORDS = ["responsibilities", "internationalization", "telecommunications", "intergovernmental"]
WORD_LIST = "\n".join(
    f"{a} {b}" + ("." if i % 3 == 0 else "")
    for i, (a, b) in enumerate((a, b) for a in LONG_WORDS for b in LONG_WORDS if a != b)
)
LINKS = "Links:\n" + "\n".join(
    f"https://example.com/reports/annual-{year}/summary" for year in range(2012, 2024)
)


def test_clean_lines_pass():
    assert fineweb_quality(LINES) is None
    assert fineweb_quality(" ".join([S1, S2, S3, S4])) is None


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "empty"),
        (" \n\t\n", "empty"),
        (MENU, "line_punct_ratio"),  # 1 of 10 lines ends a sentence
        (MENU.replace("Help", S2), "short_line_ratio"),  # 2 of 10 end a sentence, 8 are short
        (SHORT_SENTENCES, "short_line_ratio"),  # 4 of 5 lines of at most 30 characters
        ("\n".join([S1, S2, S3, S1, S4]), "char_dup_ratio"),  # one line twice: 19% of the characters
        (WORD_LIST, "list_ratio"),  # 11 newlines over 28 words
    ],
)
def test_rules_and_reason_names(text, reason):
    assert fineweb_quality(text) == reason


def test_lines_are_not_stripped_before_the_punctuation_check():
    # datatrove tests `line.endswith(...)` on the raw line: a trailing space hides the full stop.
    text = "\n".join([S1 + " ", S2 + " ", S3 + " ", S4 + " "])
    assert fineweb_quality(text) == "line_punct_ratio"
    assert fineweb_quality(text, FineWebRules(stop_chars=(". ",))) is None


def test_options():
    no_stops = "\n".join(s.rstrip(".") for s in [S1, S2, S3, S4])
    assert fineweb_quality(no_stops) == "line_punct_ratio"
    assert fineweb_quality(no_stops, FineWebRules(line_punct_exclude_zero=True)) is None
    assert fineweb_quality(no_stops, FineWebRules(line_punct_thr=None)) is None
    assert fineweb_quality(SHORT_SENTENCES, FineWebRules(short_line_length=20)) is None
    assert fineweb_quality(WORD_LIST, FineWebRules(new_line_ratio=None)) is None


def test_finance_preset_keeps_statements_ledgers_and_bullet_lists():
    for text in (STATEMENT, LEDGER, RISKS):
        assert fineweb_quality(text) == "line_punct_ratio"
        assert fineweb_quality(text, STRUCTURED_RULES) is None
    # Repeated row labels within a statement ("Goodwill" twice, a repeated header row) are fine too.
    repeated = STATEMENT + "\n|  | 2024 | 2023 | \n| Goodwill | 812.3 | 812.3 | "
    assert fineweb_quality(repeated) == "line_punct_ratio"
    assert fineweb_quality(repeated, STRUCTURED_RULES) is None


def test_finance_preset_still_drops_lists_and_fragments():
    assert fineweb_quality("\n".join(["Home", "About", "Contact", "Careers", "Login"]), STRUCTURED_RULES) == (
        "short_line_ratio"
    )
    assert fineweb_quality(WORD_LIST, STRUCTURED_RULES) is None  # two words a line: a label and a figure
    assert fineweb_quality(LINKS, STRUCTURED_RULES) == "list_ratio"  # one a line
    assert fineweb_quality("\n".join([S1, S1, S1, S2]), STRUCTURED_RULES) == "char_dup_ratio"


@pytest.mark.parametrize("domain", DOMAINS)
def test_finance_preset_keeps_clean_domain_documents(domain):
    kinds = noise_kinds(domain)
    clean = [doc["text"] for doc in rows(domain, "corpus.jsonl") if kinds.get(doc["id"], "clean") == "clean"]
    assert sum(bool(fineweb_quality(t, STRUCTURED_RULES)) for t in clean) <= 0.02 * len(clean)
    # The web defaults drop ledgers and worksheets wholesale: why the preset exists (finance ledgers;
    # real-estate prose is closer to web text, so there the preset only has to do no harm).
    web = sum(bool(fineweb_quality(t)) for t in clean)
    assert sum(bool(fineweb_quality(t, STRUCTURED_RULES)) for t in clean) <= web
    if domain == "finance":
        assert web > 0.08 * len(clean)
