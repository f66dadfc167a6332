"""Modality-specific Enhancing Module (MEM): squeeze-and-excitation channel attention per modality."""
from typing import Type

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from nnunet_mem_cif.architectures.grouped_conv import grouped_conv_op


class ModalitySpecificEnhancement(nn.Module):
    """``w_m = sigmoid(W2 · relu(W1 · GAP(F_m)))``, ``F~_m = F_m * w_m`` for each of the M modality streams.

    The input holds the M streams side by side along the channel axis (``M * channels_per_modality`` channels, stream
    m in block m). Both squeeze and excitation are grouped 1x1 convolutions (groups = M), so the attention of one
    modality is computed from that modality's features only, and all M are computed in one kernel launch.
    Global average pooling runs over *all* spatial axes (dynamic_network_architectures' SqueezeExcite pools over two
    axes only, which for 3D input would be per-slice attention).
    """

    def __init__(self, conv_op: Type[_ConvNd], num_modalities: int, channels_per_modality: int,
                 reduction: int = 4):
        super().__init__()
        hidden = max(1, channels_per_modality // reduction)
        grouped = grouped_conv_op(conv_op, num_modalities)
        self.num_modalities = num_modalities
        self.squeeze = grouped(num_modalities * channels_per_modality, num_modalities * hidden, 1, bias=True)
        self.excite = grouped(num_modalities * hidden, num_modalities * channels_per_modality, 1, bias=True)
        self.relu = nn.ReLU(inplace=True)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """Channel weights in (0, 1), shape ``(B, M * channels_per_modality, 1, ..., 1)``."""
        pooled = x.mean(dim=tuple(range(2, x.ndim)), keepdim=True)
        return torch.sigmoid(self.excite(self.relu(self.squeeze(pooled))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.attention(x)
