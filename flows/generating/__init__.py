"""Internals of the generate stage (flows/generate.py): generated-row schema and assembly,
resume from earlier attempts, the batched shard writer, progress reporting."""
