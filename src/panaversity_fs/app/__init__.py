"""The running server: wiring, request pipeline, FastMCP server and ASGI app."""
