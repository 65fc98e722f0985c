"""Curation readers: every format yields records or quarantined rows with file and line; nothing stops
the read, nothing is lost silently; only a recipe problem (missing path, absent column) raises."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from verticalft.curation.sources import RAW_CHARS, Quarantined, iter_records
from verticalft.data import DataError, read_jsonl
from verticalft.recipe import Source

ARTICLE = (
    "Acme Bank reported net interest income of 4.2 billion dollars for the third quarter, up eight "
    "percent from a year earlier, as higher deposit rates were offset by loan growth."
)
PAGE = f"""<!DOCTYPE html>
<html><head><title>Q3 results | Acme Bank</title><meta name="date" content="2024-03-15"></head>
<body>
<nav class="menu"><ul>
  <li><a href="/">Home</a></li><li><a href="/about">About us</a></li>
  <li><a href="/careers">Careers</a></li><li><a href="/login">Customer login</a></li>
</ul></nav>
<div class="cookie-banner">We use cookies to improve your experience. Accept all cookies.</div>
<main><article>
  <h1>Acme Bank reports third-quarter results</h1>
  <p>{ARTICLE}</p>
  <p>The bank's common equity tier 1 ratio rose to 12.1 percent, comfortably above the regulatory
  minimum, and management reaffirmed its full-year guidance for expenses.</p>
  <table>
    <tr><th>Metric</th><th>Q3 2024</th><th>Q3 2023</th></tr>
    <tr><td>Net interest income</td><td>4.2bn</td><td>3.9bn</td></tr>
    <tr><td>CET1 ratio</td><td>12.1%</td><td>11.6%</td></tr>
  </table>
</article></main>
<footer><p>Copyright 2024 Acme Bank. All rights reserved. Privacy policy | Terms of use</p></footer>
</body></html>
"""


def split(items) -> tuple[list[dict], list[Quarantined]]:
    items = list(items)
    return [i for i in items if isinstance(i, dict)], [i for i in items if isinstance(i, Quarantined)]


def write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def test_jsonl_bad_rows_are_quarantined_with_line_and_reason_and_reading_goes_on(tmp_path):
    path = write_lines(
        tmp_path / "corpus.jsonl",
        [
            b'{"id": "a", "text": "first good row", "license": "mit"}',  # 1
            b'{"id": "broken", "text": "unterminated',  # 2
            b"",  # 3: blank, skipped
            b'{"id": "latin1", "text": "caf\xe9 \xff\xfe revenue"}',  # 4
            b'{"id": "no-text", "body": "wrong field"}',  # 5
            b'{"text": "second good row"}',  # 6
        ],
    )
    records, bad = split(iter_records(Source(path=str(path), license="cc-by-4.0")))
    assert [(q.line, q.error.split(" (")[0]) for q in bad] == [
        (2, "not valid JSON"),
        (4, "not UTF-8"),
        (5, "missing field 'text'"),
    ]
    assert bad[0].error == "not valid JSON (Invalid control character at)"  # the line ends mid-string
    assert all(q.file == str(path) for q in bad)
    assert bad[1].raw.startswith('{"id": "latin1", "text": "caf\ufffd') and not bad[1].raw.endswith("\n")
    assert bad[2].raw == '{"id": "no-text", "body": "wrong field"}'
    assert [(r["id"], r["text"], r["license"], r["source"]) for r in records] == [
        ("a", "first good row", "mit", str(path)),  # the row's own licence wins
        ("corpus:6", "second good row", "cc-by-4.0", str(path)),  # no id: <stem>:<line>
    ]


def test_text_field_is_renamed_and_row_fields_travel(tmp_path):
    path = write_lines(
        tmp_path / "docs.ndjson",
        [
            json.dumps(
                {"doc_id": 7, "body": "hello", "license": "", "source": "sec.gov", "date": "2024"}
            ).encode(),
            json.dumps({"doc_id": 8, "body": "   "}).encode(),
            json.dumps({"doc_id": 9, "body": ["not", "a", "string"]}).encode(),
        ],
    )
    src = Source(path=str(path), license="odc-by", text_field="body", id_field="doc_id")
    records, bad = split(iter_records(src))
    assert records == [
        {"doc_id": 7, "text": "hello", "license": "odc-by", "source": "sec.gov", "date": "2024", "id": "7"}
    ]
    assert [(q.line, q.error) for q in bad] == [
        (2, "field 'body' is not a non-empty string"),
        (3, "field 'body' is not a non-empty string"),
    ]


def test_long_raw_rows_are_truncated(tmp_path):
    path = write_lines(tmp_path / "c.jsonl", [b'{"text": "' + b"x" * 5000])
    [q] = iter_records(Source(path=str(path)))
    assert q.line == 1 and RAW_CHARS <= len(q.raw) <= RAW_CHARS + 1


def test_read_jsonl_still_stops_on_the_first_bad_row_with_its_line(tmp_path):
    path = write_lines(tmp_path / "c.jsonl", [b'{"text": "ok"}', b"[1, 2]", b"{nope"])
    with pytest.raises(DataError, match=r"c\.jsonl:2: expected a JSON object, got list"):
        read_jsonl(path)
    path = write_lines(tmp_path / "d.jsonl", [b'{"text": "ok"}', b"", b'{"text": "\xff"}'])
    with pytest.raises(DataError, match=r"d\.jsonl:3: not UTF-8"):
        read_jsonl(path)
    path = write_lines(
        tmp_path / "e.jsonl", [b'{"prompt": "p", "chosen": "c", "rejected": "r"}', b'{"prompt": "p"}']
    )
    with pytest.raises(DataError, match=r"e\.jsonl:2: missing field\(s\) chosen, rejected"):
        read_jsonl(path, ("prompt", "chosen", "rejected"))
    assert read_jsonl(path)[1] == {"prompt": "p"}


def test_parquet_rows_are_numbered_across_batches(tmp_path, monkeypatch):
    from verticalft.curation import sources

    monkeypatch.setattr(sources, "PARQUET_BATCH_ROWS", 2)  # the bad row sits in the second batch
    path = tmp_path / "filings.parquet"
    texts = ["one", "two", None, "four", ""]
    pq.write_table(pa.table({"text": texts, "id": ["f1", "f2", "f3", None, "f5"]}), path, row_group_size=2)
    records, bad = split(iter_records(Source(path=str(path), license="pddl")))
    assert [(q.line, q.error) for q in bad] == [
        (3, "field 'text' is not a non-empty string"),
        (5, "field 'text' is not a non-empty string"),
    ]
    assert json.loads(bad[0].raw) == {"text": None, "id": "f3"}
    assert [(r["id"], r["text"], r["license"]) for r in records] == [
        ("f1", "one", "pddl"),
        ("f2", "two", "pddl"),
        ("filings:4", "four", "pddl"),
    ]


def test_a_column_no_row_has_is_a_recipe_error(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"body": ["x"]}), path)
    with pytest.raises(DataError, match="no column.*text.*has body"):
        list(iter_records(Source(path=str(path))))
    csv_path = tmp_path / "t.csv"
    csv_path.write_text("prompt,chosen\np,c\n")
    with pytest.raises(DataError, match="no column.*rejected"):
        list(iter_records(Source(path=str(csv_path)), ("prompt", "chosen", "rejected")))


def test_csv_lines_count_the_header_and_multiline_cells(tmp_path):
    path = tmp_path / "calls.csv"
    path.write_bytes(
        b"id,text,license\n"  # line 1
        b"c1,Revenue grew,\n"  # 2
        b'c2,"Guidance\nraised",mit\n'  # 3-4: one row over two lines
        b"c3,,\n"  # 5: empty text
        b'c4,"only\ntwo"\n'  # 6-7: short row, over two lines: reported at its first
        b"c5,caf\xe9,\n"  # 8: not UTF-8
        b"\n"  # 9: blank
        b"c6,Margins held,\n"  # 10
    )
    records, bad = split(iter_records(Source(path=str(path), license="cc0-1.0")))
    assert [(q.line, q.error) for q in bad] == [
        (5, "field 'text' is not a non-empty string"),
        (6, "row has 2 field(s), header has 3"),
        (8, "not UTF-8"),
    ]
    assert bad[2].raw == "c5,caf\ufffd,"
    assert [(r["id"], r["text"], r["license"]) for r in records] == [
        ("c1", "Revenue grew", "cc0-1.0"),
        ("c2", "Guidance\nraised", "mit"),
        ("c6", "Margins held", "cc0-1.0"),
    ]


def test_json_list_items_are_numbered(tmp_path):
    path = tmp_path / "items.json"
    path.write_text(json.dumps([{"text": "a"}, "stray", {"title": "no text"}, {"text": "b", "id": 2}]))
    records, bad = split(iter_records(Source(path=str(path))))
    assert [(r["id"], r["text"]) for r in records] == [("items:1", "a"), ("2", "b")]
    assert [(q.line, q.error) for q in bad] == [
        (2, "expected a JSON object, got str"),
        (3, "missing field 'text'"),
    ]
    path.write_text('{"text": "not a list"}')
    [q] = iter_records(Source(path=str(path)))
    assert (q.line, q.error) == (0, "expected a JSON list of objects, got dict")


def test_folder_of_pages_extracts_article_text_and_quarantines_empty_pages(tmp_path):
    folder = tmp_path / "site"
    (folder / "2024" / "q3").mkdir(parents=True)
    (folder / "2024" / "q3" / "results.html").write_text(PAGE)
    (folder / "notes.txt").write_text("Analyst notes on the quarter.\n")
    (folder / "blank.htm").write_bytes(b"")
    (folder / "garbage.html").write_bytes(b"\x00\x01\x02\xff binary junk")
    (folder / "latin1.txt").write_bytes(b"caf\xe9")
    (folder / "scan.pdf").write_bytes(b"%PDF-1.7")
    (folder / ".DS_Store").write_bytes(b"\x00")
    records, bad = split(iter_records(Source(path=str(folder), license="cc-by-4.0")))

    assert [r["id"] for r in records] == ["2024/q3/results.html", "notes.txt"]
    page, notes = records
    assert ARTICLE in page["text"]
    assert "CET1 ratio" in page["text"] and "12.1%" in page["text"]  # the table is kept
    for boilerplate in ("Customer login", "Careers", "cookies", "All rights reserved"):
        assert boilerplate not in page["text"], boilerplate
    assert page["date"] == "2024-03-15"
    assert page["license"] == "cc-by-4.0" and page["source"] == str(folder)
    assert notes["text"] == "Analyst notes on the quarter.\n" and "date" not in notes

    assert [(Path(q.file).name, q.line, q.error.split(" (")[0]) for q in bad] == [
        ("blank.htm", 0, "no text extracted from HTML"),
        ("garbage.html", 0, "no text extracted from HTML"),
        ("latin1.txt", 0, "not UTF-8"),
        ("scan.pdf", 0, "unsupported file type '.pdf' in a folder source"),
    ]


def test_hf_scheme_loads_a_local_dataset_folder(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    write_lines(
        folder / "train.jsonl", [b'{"text": "alpha", "id": "t1"}', b'{"text": ""}', b'{"text": "gamma"}']
    )
    write_lines(folder / "test.jsonl", [b'{"text": "held out", "id": "x1"}', b'{"text": "held out 2"}'])
    records, bad = split(iter_records(Source(path=f"hf://{folder}", license="mit")))
    assert [(r["id"], r["text"], r["license"], r["source"]) for r in records] == [
        ("t1", "alpha", "mit", f"hf://{folder}"),
        ("my_dataset:3", "gamma", "mit", f"hf://{folder}"),
    ]
    assert [(q.file, q.line, q.error) for q in bad] == [
        (f"hf://{folder}", 2, "field 'text' is not a non-empty string")
    ]
    records, bad = split(iter_records(Source(path=f"hf://{folder}", split="test")))
    assert [r["id"] for r in records] == ["x1", "my_dataset:2"] and not bad
    with pytest.raises(DataError, match="cannot load split 'validation'"):
        iter_records(Source(path=f"hf://{folder}", split="validation"))


def test_required_fields_mode_for_preference_rows(tmp_path):
    rows = [
        {"prompt": "Define EBITDA.", "chosen": "Earnings before ...", "rejected": "A tax."},
        {"prompt": "What is a 10-K?", "chosen": "An annual report.", "rejected": None},
        {"prompt": "Define CET1.", "chosen": "Core capital."},
        {"prompt": [{"role": "user", "content": "Hi"}], "chosen": [], "rejected": "", "id": "p4"},
    ]
    path = write_lines(tmp_path / "prefs.jsonl", [json.dumps(r).encode() for r in rows])
    records, bad = split(iter_records(Source(path=str(path)), ("prompt", "chosen", "rejected")))
    errors = [(q.line, q.error.split(";")[0]) for q in bad]
    assert errors == [(2, "field 'rejected' null"), (3, "missing field 'rejected'")]
    assert [r["id"] for r in records] == ["prefs:1", "p4"]  # no text needed; empty values are curation's call
    assert "text" not in records[0] and records[0]["chosen"] == "Earnings before ..."
    [q] = [q for q in iter_records(Source(path=str(path)), ("messages",)) if q.line == 1]
    assert q.error.startswith("missing field 'messages'; formats tried: messages")


def test_order_is_deterministic_whatever_the_file_system_says(tmp_path):
    folder = tmp_path / "pages"
    names = ["b/2.txt", "a.txt", "b/10.txt", "c.txt", "b/1.txt"]
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(f"page {name}")
    ids = [r["id"] for r in iter_records(Source(path=str(folder)))]
    assert ids == sorted(names)
    assert ids == [r["id"] for r in iter_records(Source(path=str(folder)))]


def test_missing_or_unsupported_path_is_a_recipe_error_at_once(tmp_path):
    with pytest.raises(DataError, match=r"nowhere\.jsonl: not found"):
        iter_records(Source(path=str(tmp_path / "nowhere.jsonl")))  # raised before any iteration
    (tmp_path / "book.pdf").write_bytes(b"%PDF")
    with pytest.raises(DataError, match="unsupported format '.pdf'"):
        iter_records(Source(path=str(tmp_path / "book.pdf")))
