"""Curation: one small module per filter family (docs/ARCHITECTURE.md lists them). Pure functions, no heavy imports."""
