"""Grouped convolution classes that dynamic_network_architectures' blocks can take as ``conv_op``.

The M modality streams of MemCifEncoder are block-diagonal convolutions: stream m's output channels see only stream
m's input channels. Which *kernel* computes that fastest depends on the device and library (cuDNN's grouped 3D
kernels are not always its fastest; one dense convolution on tensor cores can win despite M times the FLOPs), so the
same maths is offered in three formulations that share one parameter layout. Because the weight keeps the grouped
shape ``(out, in / groups, *kernel)`` in every formulation, parameters, state-dict keys and checkpoints are the same
whichever is chosen, and a network trained with one loads into another.
"""
from functools import lru_cache
from typing import Optional, Tuple, Type

import torch
import torch.nn.functional as F
from torch.nn.modules.conv import _ConvNd

STREAM_FORMULATIONS: Tuple[str, ...] = ("grouped", "split", "dense")
"""``grouped``: one grouped convolution (``groups`` = M); ``split``: M convolutions on the channel chunks, outputs
concatenated; ``dense``: one dense convolution whose block-diagonal weight is assembled from the grouped weight at each
forward (the off-diagonal blocks are constant zeros, not parameters, so no gradient reaches across streams)."""

_FUNCTIONAL = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def check_stream_formulation(formulation: str) -> str:
    """``formulation`` if it is one of STREAM_FORMULATIONS; a ValueError naming the valid ones otherwise."""
    if formulation not in STREAM_FORMULATIONS:
        raise ValueError(f"stream formulation must be one of {', '.join(map(repr, STREAM_FORMULATIONS))}, "
                         f"got {formulation!r}")
    return formulation


def grouped_conv_op(conv_op: Type[_ConvNd], groups: int, formulation: str = "grouped") -> Type[_ConvNd]:
    """Return a subclass of ``conv_op`` whose instances always use ``groups`` groups, computed as ``formulation``.

    Why: ``ConvDropoutNormReLU`` / ``StackedConvBlocks`` have no ``groups`` argument, but accept any ``conv_op``
    class. A subclass keeps ``issubclass(op, nn.Conv3d)`` true, so every helper of dynamic_network_architectures
    (stride/kernel conversion, matching norm/pool ops) keeps working, while M modality streams run as one module
    instead of M Python-level modules. Every formulation keeps ``groups`` and the grouped weight shape, so only the
    forward computation differs (see STREAM_FORMULATIONS). Cached so that the same (op, groups, formulation) is
    always the same class. ``groups == 1`` returns ``conv_op`` itself: one stream has nothing to keep apart.
    """
    check_stream_formulation(formulation)
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    if groups == 1:
        return conv_op
    return _grouped_class(conv_op, groups, formulation)


@lru_cache(maxsize=None)
def _grouped_class(conv_op: Type[_ConvNd], groups: int, formulation: str) -> Type[_ConvNd]:
    def __init__(self, *args, **kwargs):
        if "groups" in kwargs and kwargs["groups"] != groups:
            raise ValueError(f"{type(self).__name__} is fixed to groups={groups}, got groups={kwargs['groups']}")
        kwargs["groups"] = groups
        conv_op.__init__(self, *args, **kwargs)

    attributes = {"__init__": __init__, "__module__": __name__, "stream_formulation": formulation}
    suffix = ""
    if formulation == "split":
        attributes["_conv_forward"] = _split_conv_forward
        suffix = "Split"
    elif formulation == "dense":
        attributes["_conv_forward"] = _dense_conv_forward
        suffix = "Dense"
    return type(f"{conv_op.__name__}Groups{groups}{suffix}", (conv_op,), attributes)


def _padded(conv: _ConvNd, x: torch.Tensor):
    """The input and the padding argument for a functional convolution, as ``_ConvNd._conv_forward`` does it
    (non-zero padding modes pad explicitly, then convolve without padding)."""
    if conv.padding_mode != "zeros":
        return F.pad(x, conv._reversed_padding_repeated_twice, mode=conv.padding_mode), 0
    return x, conv.padding


def _split_conv_forward(self: _ConvNd, x: torch.Tensor, weight: torch.Tensor,
                        bias: Optional[torch.Tensor]) -> torch.Tensor:
    """M dense convolutions, stream m on its channel chunk with its chunk of the weight; outputs concatenated."""
    conv = _FUNCTIONAL[len(self.kernel_size)]
    x, padding = _padded(self, x)
    biases = [None] * self.groups if bias is None else bias.chunk(self.groups)
    return torch.cat([conv(x_m, w_m, b_m, self.stride, padding, self.dilation, 1)
                      for x_m, w_m, b_m in zip(x.chunk(self.groups, 1), weight.chunk(self.groups, 0), biases)], 1)


def block_diagonal_weight(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """The dense ``(out, in, *kernel)`` weight equivalent to the grouped ``(out, in / groups, *kernel)`` one.

    Built as the grouped weight times a 0/1 block mask (one broadcast product, traceable by torch.compile): its
    gradient is the dense weight gradient's diagonal blocks, so each stream's weight learns from its own stream only.
    """
    out_channels, in_per_group, *kernel = weight.shape
    blocks = weight.view(groups, out_channels // groups, 1, in_per_group, *kernel)
    mask = torch.eye(groups, dtype=weight.dtype, device=weight.device)
    mask = mask.view(groups, 1, groups, 1, *([1] * len(kernel)))
    return (blocks * mask).reshape(out_channels, groups * in_per_group, *kernel)


def _dense_conv_forward(self: _ConvNd, x: torch.Tensor, weight: torch.Tensor,
                        bias: Optional[torch.Tensor]) -> torch.Tensor:
    """One dense convolution with the block-diagonal weight assembled from the grouped one."""
    x, padding = _padded(self, x)
    return _FUNCTIONAL[len(self.kernel_size)](x, block_diagonal_weight(weight, self.groups), bias, self.stride,
                                              padding, self.dilation, 1)
