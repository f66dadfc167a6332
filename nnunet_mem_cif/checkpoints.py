"""Reading nnU-Net checkpoints safely: the trainers' resume and the diagnostics read them through this one module."""
import os

import numpy as np
import torch

from nnunet_mem_cif.errors import PluginUserError

# numpy types that nnU-Net's checkpoints hold (logged floats); everything else must be tensors or plain containers
_NUMPY_CORE = getattr(np, "_core", None) or np.core  # numpy >= 2 renamed np.core to np._core
CHECKPOINT_SAFE_GLOBALS = [_NUMPY_CORE.multiarray.scalar, np.dtype] + [
    getattr(np.dtypes, name) for name in ("Float16DType", "Float32DType", "Float64DType", "Int32DType", "Int64DType",
                                          "BoolDType") if hasattr(np.dtypes, name)]


class CheckpointError(PluginUserError, RuntimeError):
    """A checkpoint that cannot be resumed from; the message names the file and what to do."""


def read_checkpoint(path, map_location, mmap: bool = True) -> dict:
    """``torch.load(weights_only=True)`` with nnU-Net's numpy scalars allow-listed, before nnU-Net unpickles it.

    nnU-Net's own load_checkpoint uses ``weights_only=False``; reading the file safely first means a tampered file
    (a pickle that would run code) or a truncated one stops here with a clear message, before nnU-Net touches it.
    """
    if not isinstance(path, str):
        raise TypeError("pass the checkpoint's path: nnU-Net 2.8's load_checkpoint cannot take a loaded dict")
    if not os.path.isfile(path):
        raise CheckpointError(f"{path} does not exist")
    try:
        with torch.serialization.safe_globals(CHECKPOINT_SAFE_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as e:
        raise CheckpointError(f"{path} cannot be loaded safely ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
                              f"It is truncated, corrupt or holds objects a checkpoint should not hold. Delete it to "
                              f"resume from an older checkpoint, or train again without --c.") from e
