"""The database layer: engine, schema, migrations and the repositories (all SQL lives here)."""
