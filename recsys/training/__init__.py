"""Distributed ranker training with TorchRec sharded embeddings.

config.py (TrainConfig: the `configs/<model>.yaml` format), data.py (training table -> per-rank batches, time split),
distributed.py (process groups), sharding.py (planner constraints, CPU-capable sharders, DMP), optimizers.py (fused
embedding optimizer, AdamW / Adam++, warmup+cosine), loop.py (`train_worker`: the one worker function every launch
mode runs), checkpoint.py (DCP checkpoints, `latest` pointer, resume), export.py (`export_run`, `load_exported`).
The launcher is pipelines/train_ranker.py (`recsys train`).
"""
