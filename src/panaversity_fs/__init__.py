"""PanaversityFS: a journaled, audited storage service for AI-written books, served over MCP."""

__version__ = "0.1.0"

__all__ = ["__version__"]
