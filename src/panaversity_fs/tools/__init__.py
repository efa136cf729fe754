"""MCP tools: thin adapters that take the call's operation, call a service, return its result."""
