"""Grouped convolution classes that dynamic_network_architectures' blocks can take as ``conv_op``."""
from functools import lru_cache
from typing import Type

from torch.nn.modules.conv import _ConvNd


@lru_cache(maxsize=None)
def grouped_conv_op(conv_op: Type[_ConvNd], groups: int) -> Type[_ConvNd]:
    """Return a subclass of ``conv_op`` whose instances always use ``groups`` groups.

    Why: ``ConvDropoutNormReLU`` / ``StackedConvBlocks`` have no ``groups`` argument, but accept any ``conv_op``
    class. A subclass keeps ``issubclass(op, nn.Conv3d)`` true, so every helper of dynamic_network_architectures
    (stride/kernel conversion, matching norm/pool ops) keeps working, while M modality streams run as one grouped
    convolution instead of M Python-level modules. Cached so that the same (op, groups) is always the same class.
    """
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    if groups == 1:
        return conv_op

    def __init__(self, *args, **kwargs):
        if "groups" in kwargs and kwargs["groups"] != groups:
            raise ValueError(f"{type(self).__name__} is fixed to groups={groups}, got groups={kwargs['groups']}")
        kwargs["groups"] = groups
        conv_op.__init__(self, *args, **kwargs)

    return type(f"{conv_op.__name__}Groups{groups}", (conv_op,), {"__init__": __init__, "__module__": __name__})
