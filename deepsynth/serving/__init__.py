"""Parts of the summarization server: its config, HTTP schemas, input handling, adapters and batched generation.

`serve/summarizer.py` wires these into a Ray Serve application; nothing here starts Ray or
binds a port, so every part runs in a plain test with the tiny model.
"""
