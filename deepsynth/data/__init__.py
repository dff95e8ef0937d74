"""Documents, page images, datasets and batches. Nothing in this package knows a model's weights."""
