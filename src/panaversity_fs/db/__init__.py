"""The database layer: engine, schema, migrations and every SQL statement."""
