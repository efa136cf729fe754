"""Streaming ZIP archives of whole books, served from a signed HTTP route."""
