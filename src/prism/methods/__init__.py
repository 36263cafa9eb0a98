"""Continual-learning methods: one module per method, all on the contract in ``base``."""
