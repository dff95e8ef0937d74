"""Loading, building and freezing DeepSeek-OCR-family models."""
