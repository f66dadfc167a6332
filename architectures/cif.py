"""Complementary Information Fusion (CIF): learnable, gated exchange between modality streams."""
import math
from typing import Optional

import torch
from torch import nn

INITIAL_GATE_BIAS = -2.0  # sigmoid(-2) = 0.12: a fresh network starts close to independent streams


class ComplementaryInformationFusion(nn.Module):
    """Each modality receives a learned, gated mixture of the other modalities (docs/design.md §2).

    ``C_m = sum_{n != m} a_mn F~_n`` with ``a_m. = softmax(logits_m.)`` over the other modalities,
    ``G_m = sigmoid(W_self_m F~_m + W_other_m C_m + b_m)`` (a 1x1 convolution of ``[F~_m, C_m]``) and
    ``F'_m = F~_m + G_m * C_m``.

    Implementation: the input holds the M streams side by side along the channel axis (stream m in block m of
    ``channels_per_modality`` channels). ``C`` and the gate's pre-activation are both linear in ``F~``
    (``C = (A kron I_c) F~``, pre-activation ``W_struct F~ + b`` with ``W_struct[m, n] = delta_mn W_self_m +
    a_mn W_other_m``), so they are computed as *one* 1x1 convolution whose weight, ``exchange_weight()``, stacks
    the two matrices and is rebuilt from the small parameters at every step. Every sum over voxels is then a
    convolution (its weight gradient in backward), which cuDNN / oneDNN spread over the whole device; a matrix
    product with the voxels as inner dimension and a 4x4 or 64x64 output would run on a handful of GPU thread
    blocks. The logits start at zero (uniform mixture); the gate bias starts negative so that a fresh network
    begins close to independent streams and learns how much to exchange. With one modality there is nothing to
    exchange and the module is the identity.
    """

    def __init__(self, num_modalities: int, channels_per_modality: int,
                 initial_gate_bias: float = INITIAL_GATE_BIAS):
        super().__init__()
        m, c = num_modalities, channels_per_modality
        self.num_modalities = m
        self.channels_per_modality = c
        self.mixing_logits = nn.Parameter(torch.zeros(m, m))
        self.gate_weight_self = nn.Parameter(torch.empty(m, c, c))
        self.gate_weight_other = nn.Parameter(torch.empty(m, c, c))
        self.gate_bias = nn.Parameter(torch.empty(m * c))
        self.register_buffer("self_mask", torch.eye(m, dtype=torch.bool), persistent=False)
        self.register_buffer("channel_identity", torch.eye(c), persistent=False)
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

    def exchange_weight(self) -> torch.Tensor:
        """``[A kron I_c ; W_struct]``, shape (2*M*c, M*c): the 1x1 convolution giving ``C`` and the gate's
        pre-activation (without bias) from ``F~``; block (m, n) of ``W_struct`` is
        ``delta_mn W_self_m + a_mn W_other_m``."""
        m, c = self.num_modalities, self.channels_per_modality
        mixing = self.mixing_weights()
        mixture = torch.einsum("mn,ij->minj", mixing, self.channel_identity)
        gate = torch.einsum("mn,mij->minj", mixing, self.gate_weight_other) + \
            torch.einsum("mn,mij->minj", self.self_mask.to(mixing.dtype), self.gate_weight_self)
        return torch.cat((mixture.reshape(m * c, m * c), gate.reshape(m * c, m * c)))

    def forward(self, x: torch.Tensor, channel_scale: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``channel_scale`` (B, M*c, 1, ...): MEM's attention, applied here as ``F~ = x * channel_scale`` so that
        ``F~`` need not be kept for the backward pass either (the encoder passes it when MEM and CIF are both on)."""
        if self.num_modalities == 1:
            return x if channel_scale is None else x * channel_scale
        return GatedExchange.apply(x, channel_scale, self.exchange_weight(), self.gate_bias)


def _conv1x1(features: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``weight`` (out, in) applied as a 1x1 convolution, in the features' dtype, for any number of spatial axes."""
    spatial = features.ndim - 2
    kernel = weight.to(features.dtype).view(*weight.shape, *([1] * spatial))
    return torch.convolution(features, kernel, None, [1] * spatial, [0] * spatial, [1] * spatial, False,
                             [0] * spatial, 1)


def _mixture_and_gate(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor):
    """``C`` and ``G = sigmoid(W_struct F~ + b)`` from one convolution of ``features`` (B, M*c, ...); ``G`` is
    computed in place in the convolution's output (two views of one tensor, no further full-size allocation)."""
    complementary, gate = _conv1x1(features, weight).chunk(2, dim=1)
    gate.add_(bias.to(features.dtype).view(1, -1, *([1] * (features.ndim - 2)))).sigmoid_()
    return complementary, gate


class GatedExchange(torch.autograd.Function):
    """``F' = F + G * C`` with ``F = x * scale`` (scale optional), keeping only ``x`` and ``scale`` for backward.

    Autograd would keep ``F``, the convolution's output (``C`` and the gate's pre-activation) and ``G`` as well:
    four more tensors of the streams' size per encoder stage, the largest at full resolution. Backward recomputes
    them with one convolution, a sigmoid and a product, which costs less than the memory. Feature maths run in the
    features' dtype (fp16 under AMP; autocast is switched off inside so that forward and the recomputation agree);
    the sums over voxels that give the small parameters' gradients accumulate in fp32 (cuDNN's and oneDNN's
    convolutions accumulate fp16 in fp32; the bias and scale sums ask for fp32 explicitly), and those gradients
    come back in the parameters' dtype.
    """

    @staticmethod
    def forward(ctx, x, scale, weight, bias):
        ctx.save_for_backward(x, scale, weight, bias)
        with torch.autocast(x.device.type, enabled=False):
            features = x if scale is None else x * scale.to(x.dtype)
            complementary, gate = _mixture_and_gate(features, weight, bias)
            return torch.addcmul(features, gate, complementary)

    @staticmethod
    def backward(ctx, grad_out):
        x, scale, weight, bias = ctx.saved_tensors
        spatial = x.ndim - 2
        with torch.autocast(x.device.type, enabled=False):
            grad_out = grad_out.to(x.dtype)
            features = x if scale is None else x * scale.to(x.dtype)
            complementary, gate = _mixture_and_gate(features, weight, bias)
            grad_pre_gate = torch.ops.aten.sigmoid_backward(grad_out * complementary, gate)
            grad_conv = torch.cat((grad_out * gate, grad_pre_gate), dim=1)
            del complementary, gate
            kernel = weight.to(x.dtype).view(*weight.shape, *([1] * spatial))
            grad_features, grad_kernel, _ = torch.ops.aten.convolution_backward(
                grad_conv, features, kernel, None, [1] * spatial, [0] * spatial, [1] * spatial, False,
                [0] * spatial, 1, [True, ctx.needs_input_grad[2], False])
            del grad_conv
            grad_features.add_(grad_out)
            voxel_axes = tuple(range(2, x.ndim))
            accumulate = torch.promote_types(x.dtype, torch.float32)  # fp32 at least, fp64 stays fp64
            grad_bias = grad_pre_gate.sum((0, *voxel_axes), dtype=accumulate).to(bias.dtype)
            grad_weight = None if grad_kernel is None else grad_kernel.view(weight.shape).to(weight.dtype)
            if scale is None:
                return grad_features, None, grad_weight, grad_bias
            grad_scale = (grad_features * x).sum(voxel_axes, keepdim=True, dtype=accumulate).to(scale.dtype)
            return grad_features.mul_(scale.to(x.dtype)), grad_scale, grad_weight, grad_bias
