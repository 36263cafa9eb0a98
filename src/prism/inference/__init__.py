"""Batched greedy generation into append-only, resumable prediction files."""
