"""HTTP routes besides /mcp: archive and asset downloads, uploads, probes."""
