"""Whole-book reads: bulk pages, search, the book catalogue and schema validation."""
