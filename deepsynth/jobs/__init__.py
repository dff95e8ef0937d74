"""Job control: the SQLite job store, request validation into server-built entrypoints, progress, rate limits, secrets."""
