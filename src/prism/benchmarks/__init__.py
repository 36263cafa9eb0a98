"""Benchmarks: task sequences, their files on disk, and how each task is scored."""
