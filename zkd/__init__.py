"""zkd: Logit Standardization in Knowledge Distillation (Sun et al., CVPR 2024) in JAX/Flax.

Submodules are imported on first use, so ``import zkd`` stays cheap and never imports
TensorFlow or PyTorch:

- ``zkd.losses``   pure loss functions (standardize, KD, DKD, MLKD, CTKD)
- ``zkd.models``   the Flax model zoo behind ``build(name, num_classes, zoo=...)``
- ``zkd.convert``  PyTorch checkpoints -> Flax variables (needs torch)
- ``zkd.data``     TFDS input pipelines
- ``zkd.logit_cache``  precomputed teacher logits for every crop/flip variant of a training set
"""

import importlib
import os

# gs:// paths go through etils.epath's fsspec backend (gcsfs), never TensorFlow's gfile, whose GCS
# endpoint cannot be pointed at a test server; set before any epath URL is used (see zkd.paths).
os.environ.setdefault("EPATH_USE_TF", "false")

__version__ = "0.1.0"

_SUBMODULES = ("losses", "models", "convert", "data", "logit_cache")


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"zkd.{name}")
    raise AttributeError(f"module 'zkd' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SUBMODULES))
