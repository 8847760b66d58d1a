"""Ingest internals: corpus readers, row validation, stable ids, the demo corpus."""
