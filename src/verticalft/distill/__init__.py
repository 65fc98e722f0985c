"""Knowledge distillation: divergences (`losses`), the teacher top-k cache (`cache`), the
tokenizer preflight (`preflight`) and the trainer that puts them together (`trainer`)."""
