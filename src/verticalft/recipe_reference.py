"""docs/RECIPE.md, generated from the recipe schema: every block and key with its type, default and
description (`Field(description=…)` in recipe.py and the filter registry's blocks).

Why generated: a hand-written reference goes stale the day a key is added; this page is written
by `verticalft reference > docs/RECIPE.md`, and a test fails while the committed page differs.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Iterator, Sequence
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from verticalft.recipe import Recipe

HEADER = """# Recipe reference

Generated from the recipe schema (`src/verticalft/recipe.py`, the filter blocks of
`src/verticalft/curation/filters.py`) by `verticalft reference > docs/RECIPE.md`; edit the schema,
not this page (`tests/test_recipe_reference.py` fails while they differ). Every block rejects keys
it does not know, and `verticalft validate` prints a key's description next to a problem with its
value. `a[]` is an item of the list `a`, `a.<name>` an entry of the mapping `a`; a key whose type is
a block is described in the block's own section. Worked examples: `recipes/*.yaml`.
"""

# annotated_types / pydantic metadata attribute → how the constraint reads
CONSTRAINTS = {"gt": "> {}", "ge": "≥ {}", "lt": "< {}", "le": "≤ {}", "min_length": "at least {} item(s)"}


def reference_markdown() -> str:
    """The whole page: one section per block of the recipe, in recipe order."""
    sections = [HEADER]
    seen: dict[type[BaseModel], str] = {}
    blocks = list(_blocks("", Recipe, seen))  # every block's path first: sections name them
    sections += [_section(path, model, seen) for path, model in blocks]
    return "\n".join(sections)


def _blocks(
    path: str, model: type[BaseModel], seen: dict[type[BaseModel], str]
) -> Iterator[tuple[str, type[BaseModel]]]:
    """(path, block class) depth first; a class already documented at another path is not repeated."""
    seen[model] = path
    yield path, model
    for name, field in model.model_fields.items():
        sub = _block_of(field.annotation)
        if sub is None or sub in seen:
            continue
        yield from _blocks(_join(path, name) + _container_suffix(field.annotation), sub, seen)


def _section(path: str, model: type[BaseModel], seen: dict[type[BaseModel], str]) -> str:
    lines = [f"## `{path}`" if path else "## Top level", ""]
    doc = model.__doc__ and inspect.cleandoc(model.__doc__)
    if doc:
        lines += [" ".join(doc.split()), ""]
    lines += ["| key | type | default | description |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        cells = (f"`{name}`", _type_text(field.annotation, seen, field.metadata), _default_text(field))
        lines.append("| " + " | ".join(_cell(c) for c in (*cells, field.description or "")) + " |")
    return "\n".join(lines) + "\n"


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _members(annotation: Any) -> tuple[Any, ...]:
    """The alternatives of a union (`X | None`), else the annotation alone."""
    if get_origin(annotation) in (Union, types.UnionType):
        return get_args(annotation)
    return (annotation,)


def _strip(annotation: Any) -> Any:
    return get_args(annotation)[0] if get_origin(annotation) is Annotated else annotation


def _block_of(annotation: Any) -> type[BaseModel] | None:
    """The block class a key holds: itself, or the items of its list / values of its mapping."""
    for member in map(_strip, _members(_strip(annotation))):
        if isinstance(member, type) and issubclass(member, BaseModel):
            return member
        origin, args = get_origin(member), get_args(member)
        if origin in (list, dict) and args:
            inner = _block_of(args[-1])
            if inner is not None:
                return inner
    return None


def _container_suffix(annotation: Any) -> str:
    """`[]` for a list of blocks, `.<name>` for a mapping of them, nothing for one block."""
    for member in map(_strip, _members(_strip(annotation))):
        if get_origin(member) is list:
            return "[]"
        if get_origin(member) is dict:
            return ".<name>"
    return ""


def _type_text(annotation: Any, seen: dict[type[BaseModel], str], metadata: Sequence[Any] = ()) -> str:
    """`int (≥ 1)`, `list of str`, `one of nf4, fp4, none`, `block stages.cpt.lora`, `float or null`."""
    if get_origin(annotation) is Annotated:
        base, *extra = get_args(annotation)
        return _type_text(base, seen, [*metadata, *_flatten(extra)])
    if get_origin(annotation) in (Union, types.UnionType):  # the field's constraints are its value's
        return " or ".join(
            _type_text(a, seen, [] if a is type(None) else metadata) for a in get_args(annotation)
        )
    if get_origin(annotation) is Literal:
        text = "one of " + ", ".join(f"`{v}`" for v in get_args(annotation))
    elif get_origin(annotation) is list:
        text = f"list of {_type_text(get_args(annotation)[0], seen)}"
    elif get_origin(annotation) is dict:
        key, value = get_args(annotation)
        text = f"mapping {_type_text(key, seen)} → {_type_text(value, seen)}"
    elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
        text = f"block `{seen.get(annotation, annotation.__name__)}`"
    elif annotation is type(None):
        text = "null"
    elif annotation is Any:
        text = "any"
    else:
        text = getattr(annotation, "__name__", str(annotation))
    limits = _constraints(metadata)
    return f"{text} ({', '.join(limits)})" if limits else text


def _flatten(metadata: list[Any]) -> list[Any]:
    """Constraints written as `Field(ge=1)` inside `Annotated` sit one level down."""
    return [m for item in metadata for m in (item.metadata if isinstance(item, FieldInfo) else [item])]


def _constraints(metadata: Sequence[Any]) -> list[str]:
    out = []
    for item in metadata:
        for attr, form in CONSTRAINTS.items():
            if getattr(item, attr, None) is not None:
                out.append(form.format(getattr(item, attr)))
        if getattr(item, "pattern", None):
            out.append(f"matching `{item.pattern}`")
    return out


def _default_text(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True, validated_data={})
    if isinstance(value, BaseModel):
        changed = value.model_dump(mode="json", exclude_defaults=True)
        return "its defaults" if not changed else f"`{_inline_yaml(changed)}`"
    return f"`{_inline_yaml(value)}`"


def _inline_yaml(value: Any) -> str:
    """A value as a recipe writes it on one line: `null`, `true`, `[1, 8, 32]`, `{}`."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6, sort_keys=False, allow_unicode=True)
    return text.removesuffix("\n...\n").strip()


def _cell(text: str) -> str:
    """Table cells cannot hold `|` or line breaks."""
    return " ".join(text.split()).replace("|", "\\|")
