"""Build support: manifests and `plan_build`, `delta_build`, and the import / hydrate commands."""
