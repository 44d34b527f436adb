"""Pretraining stage: shard streaming, class-queue MoCo (SegLoc) and baselines, export.

The loss is importable on its own: `from train import class_queue_infonce`.
"""

from train.moco import class_queue_infonce

__all__ = ["class_queue_infonce"]
