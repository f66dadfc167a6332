"""MEM and CIF modules on their own."""
import pytest
import torch
from torch import nn

from nnunet_mem_cif.architectures import ComplementaryInformationFusion, ModalitySpecificEnhancement, grouped_conv_op


def test_grouped_conv_op_is_a_conv_subclass_with_fixed_groups():
    op = grouped_conv_op(nn.Conv3d, 4)
    assert issubclass(op, nn.Conv3d) and op is grouped_conv_op(nn.Conv3d, 4)
    conv = op(8, 12, 3, padding=1)
    assert conv.groups == 4 and conv.weight.shape == (12, 2, 3, 3, 3)
    assert grouped_conv_op(nn.Conv2d, 1) is nn.Conv2d
    with pytest.raises(ValueError):
        op(8, 12, 3, groups=2)


def test_mem_attention_is_computed_per_modality():
    torch.manual_seed(0)
    mem = ModalitySpecificEnhancement(nn.Conv3d, num_modalities=3, channels_per_modality=8)
    x = torch.randn(2, 24, 6, 7, 8)
    weights = mem.attention(x)
    assert weights.shape == (2, 24, 1, 1, 1)
    assert torch.all((weights > 0) & (weights < 1))
    # changing modality 2's features changes only modality 2's attention
    y = x.clone()
    y[:, 16:] = torch.randn(2, 8, 6, 7, 8) * 3 + 1
    changed = (mem.attention(y) - weights).abs().flatten(1).amax(0)
    assert torch.all(changed[:16] == 0) and changed[16:].sum() > 0
    # modalities with identical features get different weights: parameters are per modality
    same = x[:, :8].repeat(1, 3, 1, 1, 1)
    w = mem.attention(same).flatten(1)
    assert not torch.allclose(w[:, :8], w[:, 8:16])


def test_mem_pools_over_the_whole_3d_volume():
    """A change confined to one slice, far from the others, changes the attention of every voxel."""
    torch.manual_seed(0)
    mem = ModalitySpecificEnhancement(nn.Conv3d, num_modalities=2, channels_per_modality=8)
    nn.init.constant_(mem.squeeze.bias, 1.0)  # keep the hidden ReLUs active, so that the test cannot pass by luck
    x = torch.randn(1, 16, 16, 8, 8)
    y = x.clone()
    y[:, :, 15] += 5.0 * torch.rand(16, 1, 1)  # last slice only
    assert not torch.allclose(mem.attention(x), mem.attention(y))
    # and the enhanced output changes in the first slice, 15 slices away
    assert not torch.allclose(mem(x)[:, :, 0], mem(y)[:, :, 0])


def test_mem_works_in_2d():
    mem = ModalitySpecificEnhancement(nn.Conv2d, num_modalities=4, channels_per_modality=2)
    assert mem(torch.randn(3, 8, 5, 5)).shape == (3, 8, 5, 5)


def reference_cif(cif: ComplementaryInformationFusion, x: torch.Tensor) -> torch.Tensor:
    """docs/design.md §2 written out per modality, with explicit loops."""
    m, c = cif.num_modalities, cif.channels_per_modality
    streams = x.view(x.shape[0], m, c, *x.shape[2:])
    a = cif.mixing_weights()
    out = []
    for i in range(m):
        comp = sum(a[i, j] * streams[:, j] for j in range(m) if j != i)
        pre = (torch.einsum("oc,bc...->bo...", cif.gate_weight_self[i], streams[:, i])
               + torch.einsum("oc,bc...->bo...", cif.gate_weight_other[i], comp)
               + cif.gate_bias[i * c:(i + 1) * c].view(1, c, *([1] * (x.ndim - 2))))
        out.append(streams[:, i] + torch.sigmoid(pre) * comp)
    return torch.stack(out, 1).reshape(x.shape)


@pytest.mark.parametrize("shape", [(2, 12, 5, 6), (2, 12, 3, 4, 5)])
def test_cif_matches_the_per_modality_formula(shape):
    torch.manual_seed(0)
    cif = ComplementaryInformationFusion(num_modalities=3, channels_per_modality=4)
    with torch.no_grad():
        cif.mixing_logits.normal_()
        cif.gate_bias.normal_()
    x = torch.randn(*shape)
    torch.testing.assert_close(cif(x), reference_cif(cif, x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("with_mem_scale", [False, True])
def test_cif_gradients_match_autograd_of_the_per_modality_formula(with_mem_scale):
    """CIF's backward recomputes MEM's scaling, the gate and the mixture instead of storing them: still exact."""
    torch.manual_seed(0)
    cif = ComplementaryInformationFusion(num_modalities=3, channels_per_modality=4).double()
    with torch.no_grad():
        cif.mixing_logits.normal_()
        cif.gate_bias.normal_()
    x = torch.randn(2, 12, 3, 4, 5, dtype=torch.double, requires_grad=True)
    scale = torch.rand(2, 12, 1, 1, 1, dtype=torch.double, requires_grad=True) if with_mem_scale else None
    weights = torch.randn_like(x)
    inputs = [x] + ([scale] if with_mem_scale else []) + list(cif.parameters())
    ours = cif(x, channel_scale=scale)
    reference = reference_cif(cif, x * scale if with_mem_scale else x)
    torch.testing.assert_close(ours, reference)
    for a, b in zip(torch.autograd.grad((ours * weights).sum(), inputs),
                    torch.autograd.grad((reference * weights).sum(), inputs)):
        torch.testing.assert_close(a, b)
    assert torch.autograd.gradcheck(lambda t, s: cif(t, channel_scale=s), (x, scale))


def test_cif_mixing_excludes_self_and_sums_to_one():
    cif = ComplementaryInformationFusion(4, 2)
    with torch.no_grad():
        cif.mixing_logits.normal_()
    a = cif.mixing_weights()
    assert torch.all(a.diagonal() == 0)
    torch.testing.assert_close(a.sum(1), torch.ones(4))


def test_cif_with_one_modality_is_identity():
    cif = ComplementaryInformationFusion(1, 4)
    x = torch.randn(2, 4, 3, 3, 3)
    assert torch.equal(cif(x), x)


def test_cif_exchanges_information_between_modalities():
    torch.manual_seed(0)
    cif = ComplementaryInformationFusion(2, 3)
    x = torch.randn(1, 6, 4, 4, 4)
    y = x.clone()
    y[:, 3:] += 1.0  # change modality 1 only
    assert not torch.allclose(cif(x)[:, :3], cif(y)[:, :3])  # modality 0 sees it


def test_cif_computes_mixture_and_gate_as_one_stacked_weight():
    """``exchange_weight`` is ``[A kron I_c ; W_struct]``: applied to the streams it gives C and the gate's
    pre-activation of the per-modality formula."""
    torch.manual_seed(0)
    cif = ComplementaryInformationFusion(num_modalities=3, channels_per_modality=4).double()
    with torch.no_grad():
        cif.mixing_logits.normal_()
    weight = cif.exchange_weight()
    assert weight.shape == (24, 12)
    x = torch.randn(2, 12, 5, dtype=torch.double)
    mixture, pre_gate = torch.einsum("oc,bcv->bov", weight, x).chunk(2, dim=1)
    streams, a = x.view(2, 3, 4, 5), cif.mixing_weights()
    for m in range(3):
        expected = sum(a[m, n] * streams[:, n] for n in range(3) if n != m)
        torch.testing.assert_close(mixture[:, 4 * m:4 * m + 4], expected)
        expected_pre = (torch.einsum("oc,bcv->bov", cif.gate_weight_self[m], streams[:, m])
                        + torch.einsum("oc,bcv->bov", cif.gate_weight_other[m], expected))
        torch.testing.assert_close(pre_gate[:, 4 * m:4 * m + 4], expected_pre)


def saved_tensor_sizes(function, *inputs) -> list:
    """Element counts of the tensors autograd keeps for the backward pass of ``function(*inputs)``."""
    sizes = []

    def pack(tensor):
        sizes.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        function(*inputs)
    return sizes


@pytest.mark.parametrize("with_mem_scale", [False, True])
def test_cif_keeps_one_input_sized_tensor_for_backward(with_mem_scale):
    cif = ComplementaryInformationFusion(num_modalities=4, channels_per_modality=8)
    x = torch.randn(2, 32, 12, 12, 12, requires_grad=True)
    scale = torch.rand(2, 32, 1, 1, 1, requires_grad=True) if with_mem_scale else None
    sizes = saved_tensor_sizes(lambda: cif(x, channel_scale=scale))
    large = [s for s in sizes if s >= x.numel()]
    assert large == [x.numel()]  # x itself; mixture, gate and MEM-scaled features are recomputed
    assert sum(sizes) - x.numel() < 0.05 * x.numel()  # the rest: the small parameters and what builds the weight


def test_cif_small_parameter_gradients_accumulate_in_fp32():
    """Half-precision features (as under AMP), many voxels: the bias gradient, a sum over every voxel, comes back
    as the fp32 sum; a half-precision sum of 2**16 ones would stop growing at 2048."""
    cif = ComplementaryInformationFusion(num_modalities=2, channels_per_modality=1)
    with torch.no_grad():
        cif.mixing_logits.zero_()
        cif.gate_weight_self.zero_()
        cif.gate_weight_other.zero_()
        cif.gate_bias.zero_()  # gate 0.5, d(gate)/d(bias) = 0.25
    x = torch.ones(1, 2, 2 ** 16, dtype=torch.bfloat16 if not torch.cuda.is_available() else torch.float16)
    out = cif(x)
    out.backward(torch.ones_like(out))
    # d out / d bias = C * gate * (1 - gate) summed over voxels = 1 * 0.25 * 2**16
    torch.testing.assert_close(cif.gate_bias.grad, torch.full((2,), 0.25 * 2 ** 16))
    assert cif.gate_bias.grad.dtype == torch.float32
