"""File history: list, read, compare and restore versions; revert an agent's changes."""
