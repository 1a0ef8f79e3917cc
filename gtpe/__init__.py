"""gtpe: graph transformers and positional encodings for PyTorch Geometric.

Subpackages:
    gtpe.transforms  positional / structural encodings as PyG transforms (+ ``precompute``)
    gtpe.nn          attention modules, PE encoders and the GPS layer
    gtpe.models      ``GPSModel`` built from a config dataclass
    gtpe.datasets    loaders (official sources or the ``GTPE_MIRROR`` offline mirror) and metrics
    gtpe.train       the training loop behind ``gtpe train``; ``gtpe.load_run(DIR)`` reads a run back
"""
from typing import Any

__version__ = "0.2.0"  # part of the precompute cache key: bump when encodings change

__all__ = ["__version__", "load_run", "precompute"]


def precompute(*args: Any, **kwargs: Any):
    """Run PE transforms over many graphs in batches (see :func:`gtpe.transforms.precompute`)."""
    from gtpe.transforms.precompute import precompute as _precompute

    return _precompute(*args, **kwargs)


def load_run(*args: Any, **kwargs: Any):
    """``(model, config, info)`` of a training run folder (see :func:`gtpe.train.run.load_run`)."""
    from gtpe.train.run import load_run as _load_run

    return _load_run(*args, **kwargs)
