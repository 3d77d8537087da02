"""Training: objective (rectified flow + REPA), data, checkpoints, and the loop.

`train` loads on first use, so `train.checkpoint` (which the checkpoint reader needs) imports nothing else."""


def __getattr__(name):
    if name == "train":
        from .loop import train  # noqa: PLC0415 (train.checkpoint must import without the loop)

        return train
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["train"]
