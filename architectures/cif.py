"""Complementary Information Fusion (CIF): learnable, gated exchange between modality streams."""
import math

import torch
from torch import nn


class ComplementaryInformationFusion(nn.Module):
    """Each modality receives a learned, gated mixture of the other modalities (DESIGN §2).

    ``C_m = sum_{n != m} a_mn F~_n`` with ``a_m. = softmax(logits_m.)`` over the other modalities,
    ``G_m = sigmoid(W_self_m F~_m + W_other_m C_m + b_m)`` (a 1x1 convolution of ``[F~_m, C_m]``) and
    ``F'_m = F~_m + G_m * C_m``.

    Implementation: the input holds the M streams side by side along the channel axis (stream m in block m of
    ``channels_per_modality`` channels). Because ``C`` is linear in ``F~``, the gate's pre-activation is one dense
    channel product ``W_struct @ F~`` with ``W_struct[m, n] = delta_mn W_self_m + a_mn W_other_m``: two small
    matrix products per step, no concatenated ``[F~, C]`` tensor, no Python loop over modalities. It works for any
    number of spatial axes. The logits start at zero (uniform mixture); the gate bias starts negative so that a
    fresh network begins close to independent streams and learns how much to exchange. With one modality there is
    nothing to exchange and the module is the identity.
    """

    def __init__(self, num_modalities: int, channels_per_modality: int, initial_gate_bias: float = -2.0):
        super().__init__()
        m, c = num_modalities, channels_per_modality
        self.num_modalities = m
        self.channels_per_modality = c
        self.mixing_logits = nn.Parameter(torch.zeros(m, m))
        self.gate_weight_self = nn.Parameter(torch.empty(m, c, c))
        self.gate_weight_other = nn.Parameter(torch.empty(m, c, c))
        self.gate_bias = nn.Parameter(torch.empty(m * c))
        self.register_buffer("self_mask", torch.eye(m, dtype=torch.bool), persistent=False)
        self.initial_gate_bias = initial_gate_bias
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He init as nnU-Net's InitWeights_He(1e-2) does for a 1x1 conv with 2c inputs; gate bias negative."""
        std = math.sqrt(2.0 / (1 + 1e-2 ** 2) / (2 * self.channels_per_modality))
        nn.init.normal_(self.gate_weight_self, 0.0, std)
        nn.init.normal_(self.gate_weight_other, 0.0, std)
        nn.init.constant_(self.gate_bias, self.initial_gate_bias)
        nn.init.zeros_(self.mixing_logits)

    def mixing_weights(self) -> torch.Tensor:
        """Row m holds a_m. (zero on the diagonal, rows sum to one)."""
        logits = self.mixing_logits.masked_fill(self.self_mask, float("-inf"))
        return torch.softmax(logits, dim=1)

    def gate_matrix(self, mixing: torch.Tensor) -> torch.Tensor:
        """``W_struct`` of shape (M*c, M*c), built from the small parameters each step."""
        m, c = self.num_modalities, self.channels_per_modality
        other = torch.einsum("mn,mij->minj", mixing, self.gate_weight_other)
        own = torch.diag_embed(self.gate_weight_self.permute(1, 2, 0)).permute(2, 0, 3, 1)  # (m, c, m, c), block-diag
        return (other + own).reshape(m * c, m * c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.num_modalities == 1:
            return x
        b = x.shape[0]
        mixing = self.mixing_weights().to(x.dtype)
        flat = x.reshape(b, x.shape[1], -1)
        complementary = torch.matmul(mixing, x.reshape(b, self.num_modalities, -1)).view_as(flat)
        pre_gate = torch.baddbmm(self.gate_bias.to(x.dtype)[None, :, None],
                                 self.gate_matrix(mixing).expand(b, -1, -1), flat)
        return torch.addcmul(flat, torch.sigmoid(pre_gate), complementary).view_as(x)
