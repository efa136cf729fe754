"""The command line and what only it runs: serving, import, hydrate, settings reference."""
