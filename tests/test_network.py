"""MemCifUNet: shapes, deep supervision, gradients, switches, and building it from real nnU-Net plans."""
import os

import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from torch import nn

from nnunet_mem_cif.architectures import ComplementaryInformationFusion, MemCifUNet, ModalitySpecificEnhancement


def network_kwargs(dim: int, modalities: int, **overrides) -> dict:
    kwargs = dict(
        input_channels=modalities, n_stages=4, features_per_stage=[8, 16, 32, 32],
        conv_op=nn.Conv3d if dim == 3 else nn.Conv2d, kernel_sizes=3, strides=[1, 2, 2, 2], n_conv_per_stage=2,
        num_classes=3, n_conv_per_stage_decoder=1, conv_bias=True,
        norm_op=nn.InstanceNorm3d if dim == 3 else nn.InstanceNorm2d, norm_op_kwargs={"eps": 1e-5, "affine": True},
        dropout_op=None, dropout_op_kwargs=None, nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True},
        deep_supervision=True)
    kwargs.update(overrides)
    return kwargs


def build(dim: int, modalities: int, **overrides) -> MemCifUNet:
    torch.manual_seed(0)
    net = MemCifUNet(**network_kwargs(dim, modalities, **overrides))
    net.apply(net.initialize)
    return net


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("modalities", [1, 2, 4])
def test_output_shapes(dim, modalities):
    net = build(dim, modalities)
    size = (16,) * dim
    outputs = net(torch.randn(2, modalities, *size))
    assert [tuple(o.shape) for o in outputs] == [(2, 3, *(s // f for s in size)) for f in (1, 2, 4)]
    net.decoder.deep_supervision = False
    assert net(torch.randn(2, modalities, *size)).shape == (2, 3, *size)


def test_deep_supervision_does_not_change_state_dict_keys():
    with_ds = build(3, 4, deep_supervision=True)
    without_ds = build(3, 4, deep_supervision=False)
    assert list(with_ds.state_dict().keys()) == list(without_ds.state_dict().keys())
    without_ds.load_state_dict(with_ds.state_dict(), strict=True)
    assert isinstance(with_ds(torch.randn(1, 4, 16, 16, 16)), list)
    assert isinstance(without_ds(torch.randn(1, 4, 16, 16, 16)), torch.Tensor)


@pytest.mark.parametrize("dim", [2, 3])
def test_gradients_reach_every_parameter(dim):
    net = build(dim, 4)
    outputs = net(torch.randn(2, 4, *(16,) * dim))
    sum(o.square().mean() for o in outputs).backward()
    mem_cif = [(n, p) for n, p in net.named_parameters() if ".mem." in n or ".cif." in n]
    assert len(mem_cif) > 0
    for name, parameter in net.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def count(net: nn.Module, kind) -> int:
    return sum(isinstance(m, kind) for m in net.modules())


def test_switches_remove_modules():
    full = build(3, 4)
    assert count(full, ModalitySpecificEnhancement) == 4 and count(full, ComplementaryInformationFusion) == 4
    no_mem = build(3, 4, use_mem=False)
    assert count(no_mem, ModalitySpecificEnhancement) == 0 and count(no_mem, ComplementaryInformationFusion) == 4
    plain = build(3, 4, use_mem=False, use_cif=False)
    assert count(plain, ModalitySpecificEnhancement) == 0 and count(plain, ComplementaryInformationFusion) == 0
    modules_per_mem = sum(1 for _ in full.encoder.mem[0].modules())  # the module, squeeze, excite, relu
    removed = 4 * modules_per_mem + 4 * 1 + 2  # 4 MEM, 4 CIF (raw parameters), their two ModuleLists
    assert sum(1 for _ in plain.modules()) == sum(1 for _ in full.modules()) - removed
    single = build(3, 1)
    assert count(single, ComplementaryInformationFusion) == 0  # nothing to exchange with one modality


def test_modality_streams_are_grouped_convolutions():
    net = build(3, 4)
    first = net.encoder.stages[0].convs[0].conv
    assert first.groups == 4 and first.in_channels == 4 and first.out_channels == 4 * 4  # width 8 * 0.5 per stream
    assert net.encoder.output_channels == [8, 16, 32, 32]  # what the decoder sees: the plans' widths


def test_stream_width_changes_stream_channels_only():
    wide = build(3, 2, stream_width=1.0)
    assert wide.encoder.stream_channels == [8, 16, 32, 32]
    assert wide.encoder.output_channels == [8, 16, 32, 32]


def test_parameter_count_is_close_to_plain_unet():
    kwargs = network_kwargs(3, 4)
    plain = PlainConvUNet(**kwargs)
    memcif = MemCifUNet(**kwargs)
    ratio = sum(p.numel() for p in memcif.parameters()) / sum(p.numel() for p in plain.parameters())
    assert 0.8 < ratio < 1.5


def test_network_from_real_nnunet_plans(workspace):
    """Built by nnU-Net's own get_network_from_plans from the plans nnUNetv2_plan_and_preprocess wrote."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunet_workspace import DATASET_NAME
    plans = PlansManager(os.path.join(workspace.preprocessed, DATASET_NAME, "nnUNetPlans.json"))
    configuration = plans.get_configuration("3d_fullres")
    net = get_network_from_plans("nnunet_mem_cif.architectures.MemCifUNet", configuration.network_arch_init_kwargs,
                                 configuration.network_arch_init_kwargs_req_import, 4, 3, allow_init=True,
                                 deep_supervision=True)
    assert isinstance(net, MemCifUNet)
    patch = configuration.patch_size
    outputs = net(torch.randn(1, 4, *patch))
    assert tuple(outputs[0].shape) == (1, 3, *patch)
    assert len(outputs) == len(configuration.pool_op_kernel_sizes) - 1  # one output per decoder stage
