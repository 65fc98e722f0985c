"""Vocabulary preflight: can the student be trained on the teacher's token distributions?

Logit distillation compares two distributions position by position, which only means something
when token id i is the same string for both models. Checked before any model weight is loaded
(tokenizers and configs only):

- identical tokenizers, embedding rows == tokenizer size       → go
- identical tokenizers, one model has padded rows (Qwen2.5-7B has 152,064 rows for a
  151,665-token tokenizer, other sizes 151,936) → trim both logit tensors to the tokenizer's
  size and go, saying so (the padded rows are never a real token)
- anything else (different vocabularies, special tokens or chat templates) → the logit kinds
  refuse, naming both tokenizers and the way out: `distill.kind: sequence` (text is
  tokenizer-agnostic), or TRL's cross-tokenizer GOLD trainer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass
class VocabReport:
    verdict: Literal["identical", "padded", "different"]
    teacher: str
    student: str
    tokenizer_size: int  # ids both share (what logits are trimmed to)
    teacher_rows: int
    student_rows: int
    overlap: float  # share of token strings present in both vocabularies, same id
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.verdict != "different"

    def message(self) -> str:
        if self.verdict == "identical":
            return f"tokenizers identical ({self.tokenizer_size} tokens, embedding rows match)"
        if self.verdict == "padded":
            return (
                f"same tokenizer ({self.tokenizer_size} tokens); embedding rows padded "
                f"(teacher {self.teacher_rows}, student {self.student_rows}): logits are trimmed "
                f"to the first {self.tokenizer_size} ids"
            )
        return (
            f"teacher {self.teacher} and student {self.student} do not share a tokenizer "
            f"({'; '.join(self.problems)}; {self.overlap:.1%} of token strings map to the same id). "
            "Logit distillation needs token id i to mean the same string in both models. "
            "Use `distill.kind: sequence` (the student learns from the teacher's generated text, "
            "any tokenizer), or TRL's cross-tokenizer GOLD trainer (trl.experimental.gold)."
        )


def _rows(config: Any) -> int:
    text = getattr(config, "get_text_config", lambda: config)()
    return int(text.vocab_size)


def compare(
    teacher_name: str,
    teacher_tok: Any,
    teacher_config: Any,
    student_name: str,
    student_tok: Any,
    student_config: Any,
) -> VocabReport:
    """Pure comparison of two (tokenizer, config) pairs; see the module docstring."""
    t_vocab, s_vocab = teacher_tok.get_vocab(), student_tok.get_vocab()
    shared = sum(1 for tok, i in t_vocab.items() if s_vocab.get(tok) == i)
    overlap = shared / max(len(t_vocab), len(s_vocab), 1)
    problems = []
    if t_vocab != s_vocab:
        problems.append(f"vocabularies differ ({len(t_vocab)} vs {len(s_vocab)} tokens)")
    t_special = {k: str(v) for k, v in teacher_tok.special_tokens_map.items()}
    s_special = {k: str(v) for k, v in student_tok.special_tokens_map.items()}
    if t_special != s_special:
        diff = sorted(k for k in t_special.keys() | s_special.keys() if t_special.get(k) != s_special.get(k))
        problems.append(f"special tokens differ ({', '.join(diff)})")
    if (teacher_tok.chat_template or "") != (student_tok.chat_template or ""):
        problems.append("chat templates differ")
    size = len(teacher_tok)
    t_rows, s_rows = _rows(teacher_config), _rows(student_config)
    if min(t_rows, s_rows) < size:
        problems.append(f"a model has fewer embedding rows than tokens ({min(t_rows, s_rows)} < {size})")
    if problems:
        verdict: Literal["identical", "padded", "different"] = "different"
    elif t_rows == s_rows == size:
        verdict = "identical"
    else:
        verdict = "padded"
    return VocabReport(verdict, teacher_name, student_name, size, t_rows, s_rows, round(overlap, 4), problems)


def check_pair(
    teacher: str,
    student: str,
    trust_remote_code: bool = False,
    chat_template: str | None = None,
    local_files_only: bool = False,
) -> VocabReport:
    """Load only tokenizers and configs (no weights) of two HF ids/folders and compare them.

    Both tokenizers get the run's chat template (`chat_template`: the recipe's choice) as the
    stages would: a trained teacher folder carries the training variant, an untouched student
    folder its own, and those are the same template. `local_files_only`: hub ids from the local HF
    cache only (offline)."""
    from transformers import AutoConfig, AutoTokenizer

    from verticalft.chat_templates import use_run_template

    def load(path: str) -> tuple[Any, Any]:
        return (
            use_run_template(
                AutoTokenizer.from_pretrained(
                    path, trust_remote_code=trust_remote_code, local_files_only=local_files_only
                ),
                chat_template,
            ),
            AutoConfig.from_pretrained(
                path, trust_remote_code=trust_remote_code, local_files_only=local_files_only
            ),
        )

    t_tok, t_cfg = load(teacher)
    s_tok, s_cfg = load(student)
    return compare(teacher, t_tok, t_cfg, student, s_tok, s_cfg)
