"""The OpenAI-compatible HTTP server (`python -m tritium serve`; needs the serve extra)."""
