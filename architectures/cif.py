"""Complementary Information Fusion (CIF): learnable, gated exchange between modality streams."""
import math
from typing import Optional

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

    def forward(self, x: torch.Tensor, channel_scale: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``channel_scale`` (B, M*c, 1, ...): MEM's attention, applied here as ``F~ = x * channel_scale`` so that
        ``F~`` need not be kept for the backward pass either (the encoder passes it when MEM and CIF are both on)."""
        if self.num_modalities == 1:
            return x if channel_scale is None else x * channel_scale
        b, channels = x.shape[:2]
        scale = None if channel_scale is None else channel_scale.reshape(b, channels, 1)
        mixing = self.mixing_weights()
        out = GatedExchange.apply(x.reshape(b, channels, -1), scale, mixing, self.gate_matrix(mixing),
                                  self.gate_bias, self.num_modalities)
        return out.view_as(x)


def _mixture_and_gate(flat: torch.Tensor, mixing: torch.Tensor, gate_matrix: torch.Tensor, gate_bias: torch.Tensor,
                      num_modalities: int):
    """``C = (A kron I_c) F`` and ``G = sigmoid(W_struct F + b)`` for ``flat`` of shape (B, M*c, voxels)."""
    b = flat.shape[0]
    complementary = torch.matmul(mixing, flat.reshape(b, num_modalities, -1)).view_as(flat)
    gate = torch.sigmoid(torch.baddbmm(gate_bias[None, :, None], gate_matrix.expand(b, -1, -1), flat))
    return complementary, gate


class GatedExchange(torch.autograd.Function):
    """``F' = F + G * C`` with ``F = x * scale`` (scale optional), keeping only ``x`` and ``scale`` for backward.

    Autograd would keep ``F``, ``C`` and ``G`` as well: three more tensors of the streams' full size per encoder
    stage, the largest of them at full resolution. Recomputing them in backward costs two channel products, a
    sigmoid and a product, which is cheaper than the memory (issue #6: peak memory). All maths in the features'
    dtype (fp16 under AMP); parameter gradients come back in the parameters' dtype.
    """

    @staticmethod
    def forward(ctx, x, scale, mixing, gate_matrix, gate_bias, num_modalities: int):
        ctx.num_modalities = num_modalities
        ctx.parameter_dtypes = (None if scale is None else scale.dtype, mixing.dtype, gate_matrix.dtype,
                                gate_bias.dtype)
        mixing, gate_matrix, gate_bias = (t.to(x.dtype) for t in (mixing, gate_matrix, gate_bias))
        scale = None if scale is None else scale.to(x.dtype)
        ctx.save_for_backward(x, scale, mixing, gate_matrix, gate_bias)
        features = x if scale is None else x * scale
        complementary, gate = _mixture_and_gate(features, mixing, gate_matrix, gate_bias, num_modalities)
        return torch.addcmul(features, gate, complementary)

    @staticmethod
    def backward(ctx, grad_out):
        x, scale, mixing, gate_matrix, gate_bias = ctx.saved_tensors
        m, b = ctx.num_modalities, x.shape[0]
        features = x if scale is None else x * scale
        complementary, gate = _mixture_and_gate(features, mixing, gate_matrix, gate_bias, m)
        grad_complementary = grad_out * gate
        grad_pre_gate = grad_out * complementary * gate * (1 - gate)
        del complementary, gate
        grad_features = torch.baddbmm(grad_out, gate_matrix.t().expand(b, -1, -1), grad_pre_gate)
        grad_features.view(b, m, -1).add_(torch.matmul(mixing.t(), grad_complementary.view(b, m, -1)))
        grad_mixing = torch.matmul(grad_complementary.view(b, m, -1),
                                   features.view(b, m, -1).transpose(1, 2)).sum(0)
        grad_gate_matrix = torch.matmul(grad_pre_gate, features.transpose(1, 2)).sum(0)
        grad_gate_bias = grad_pre_gate.sum((0, 2))
        del features, grad_complementary, grad_pre_gate
        scale_dtype, mixing_dtype, matrix_dtype, bias_dtype = ctx.parameter_dtypes
        if scale is None:
            grad_x, grad_scale = grad_features, None
        else:
            grad_scale = (grad_features * x).sum(2, keepdim=True).to(scale_dtype)
            grad_x = grad_features.mul_(scale)
        return (grad_x, grad_scale, grad_mixing.to(mixing_dtype), grad_gate_matrix.to(matrix_dtype),
                grad_gate_bias.to(bias_dtype), None)
