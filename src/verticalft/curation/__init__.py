"""Curation: one small module per filter family (see DESIGN.md). Pure functions, no heavy imports."""
