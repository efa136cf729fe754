"""Content files: the write protocol, reads with overlay resolution, deletes, recovery."""
