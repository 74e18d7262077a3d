"""Demos: GPT-2-shaped generation over a paged KV cache, FP8 KV-cache storage."""
