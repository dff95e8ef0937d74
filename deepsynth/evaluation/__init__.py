"""Evaluation parts: batched summary generation with a repetition guard, and summary metrics."""
