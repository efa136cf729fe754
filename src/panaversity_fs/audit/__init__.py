"""The tamper-evident audit trail: canonical entry hashing, chain verification, recording."""
