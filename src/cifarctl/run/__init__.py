"""A training run's files: its folder and lock, config, metrics log, checkpoints, and what a resume reads.

``folder`` (one run folder as training writes it), ``index`` (every run: ``cifarctl runs``),
``config`` (``TrainConfig``), ``checkpoint`` (save, verify, load), ``log`` (metrics.jsonl),
``resume`` (a run's config and checkpoint, and what a resume may change).
"""
