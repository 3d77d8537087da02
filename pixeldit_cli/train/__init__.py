"""Training: objective (rectified flow + REPA), data, checkpoints, and the loop."""

from .loop import train

__all__ = ["train"]
