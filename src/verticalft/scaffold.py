"""`verticalft new <domain>`: a new vertical from an existing one — one YAML and a data folder.

The copy runs as-is (`make <domain>-dpo PROFILE=tiny` works at once on the template's sample),
so the author changes one thing at a time: descriptions and models in the YAML, documents and
task generators in `data_pipelines/<domain>/build_sample.py`. The template's description and
relevance keywords are not copied: they become TODO placeholders for the author to fill.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

NAME = re.compile(r"^[a-z][a-z0-9_]*$")


# What a new vertical takes from its template: the sample builder and its output. Connectors
# (data_pipelines/finance/edgar.py) and fetched `data/` belong to the template's domain, and so
# does the sample's `noise_labels.jsonl`: it labels the template's documents, and a curation report
# would score the new vertical's own corpus against it (the builder writes new labels when run).
TEMPLATE_PARTS = {"build_sample.py", "sample"}
TEMPLATE_SAMPLE_ONLY = {"noise_labels.jsonl"}


def _template_only(folder: str, names: list[str]) -> set[str]:
    top = Path(folder).name != "sample"
    return {
        n
        for n in names
        if (top and n not in TEMPLATE_PARTS) or (not top and n in TEMPLATE_SAMPLE_ONLY) or n == "__pycache__"
    }


def _drop_connector_comments(text: str, template: str) -> str:
    """Remove YAML comments that name a file of the template's folder the copy leaves behind
    (e.g. `# EDGAR filings (data_pipelines/finance/edgar.py)`)."""
    names = re.compile(rf"data_pipelines/{re.escape(template)}/([\w./-]+)")

    def strip(line: str) -> str:
        code, sep, comment = line.partition(" #")
        mentioned = names.findall(comment) if sep else []
        if any(m.split("/")[0] not in TEMPLATE_PARTS and m.split("/")[0] != "data" for m in mentioned):
            return code.rstrip()
        return line

    return "\n".join(strip(line) for line in text.split("\n"))


def _blank_domain_words(text: str, domain: str, template: str) -> str:
    """Replace the template's description and its relevance `keywords`/`patterns` lists with
    empty placeholders marked TODO.

    Why: a copied keyword filter would keep finance documents and drop legal ones, silently, and a
    copied description would label the new vertical as the template's. An empty list is the
    filter's "no keywords configured" (it keeps every document), so the copy still runs as-is.
    """
    text = re.sub(
        r"^description:.*$",
        f'description: "TODO: what the {domain} vertical covers (was {template}\'s)"',
        text,
        count=1,
        flags=re.M,
    )
    todo = {
        "keywords": f"TODO: words a {domain} document uses; [] keeps every document",
        "patterns": f"TODO: regular expressions of {domain} text (optional)",
    }
    for key, note in todo.items():
        flow = rf"^(?P<indent>[ \t]*){key}:[ \t]*\[[^\]]*\][^\n]*$"  # keywords: [a, b,\n   c]
        block = rf"^(?P<indent>[ \t]*){key}:[ \t]*(?:#[^\n]*)?\n(?:(?P=indent)[ \t]*- [^\n]*\n)+"
        text = re.sub(block, _emptied_list(key, note, "\n"), text, flags=re.M)
        text = re.sub(flow, _emptied_list(key, note, ""), text, flags=re.M)
    return text


def _emptied_list(key: str, note: str, end: str) -> Callable[[re.Match[str]], str]:
    """The replacement of a matched `key:` list: `key: []   # note`, at the list's indent."""
    return lambda m: f"{m['indent']}{key}: []   # {note}{end}"


def scaffold_vertical(domain: str, template: str, root: Path) -> list[Path]:
    if not NAME.match(domain):
        raise ValueError(
            f"'{domain}' is not a valid vertical name: use lower-case letters, digits and _ "
            f"(it becomes recipes/{domain}.yaml and `make {domain}-<stage>`)"
        )
    src_recipe = root / "recipes" / f"{template}.yaml"
    src_data = root / "data_pipelines" / template
    if not src_recipe.is_file() or not src_data.is_dir():
        raise ValueError(
            f"template '{template}' needs recipes/{template}.yaml and data_pipelines/{template}/"
        )
    dst_recipe = root / "recipes" / f"{domain}.yaml"
    dst_data = root / "data_pipelines" / domain
    for path in (dst_recipe, dst_data):
        if path.exists():
            raise ValueError(f"{path} already exists; pick another name or remove it")
    text = _drop_connector_comments(src_recipe.read_text(), template)
    text = re.sub(rf"^name: {template}$", f"name: {domain}", text, flags=re.M)
    text = text.replace(f"data_pipelines/{template}/", f"data_pipelines/{domain}/")
    text = _blank_domain_words(text, domain, template)
    header = f"# {domain}: scaffolded from recipes/{template}.yaml by `verticalft new`; edit freely.\n"
    dst_recipe.write_text(header + text)
    shutil.copytree(src_data, dst_data, ignore=_template_only)
    return [dst_recipe, dst_data]
