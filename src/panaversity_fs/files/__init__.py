"""Journaled files: addresses, verified reads, the write engine, publishing, consistency."""
