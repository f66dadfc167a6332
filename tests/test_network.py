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
    from .nnunet_workspace import DATASET_NAME
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


# ---------------------------------------------------------------------------------------------- stream formulations
FORMULATIONS = ("grouped", "split", "dense")


def outputs_and_gradients(net: MemCifUNet, x: torch.Tensor):
    outputs = net(x)
    outputs = outputs if isinstance(outputs, list) else [outputs]
    sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view_as(o)).sum() for o in outputs).backward()
    return [o.detach() for o in outputs], {name: p.grad.clone() for name, p in net.named_parameters()}


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("formulation", ["split", "dense"])
def test_stream_formulations_compute_the_same_outputs_and_gradients(dim, formulation):
    """fp64, same weights: any difference beyond summation order would be a bug in the formulation."""
    reference = build(dim, 4).double()
    net = build(dim, 4, stream_formulation=formulation).double()
    net.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 4, *(16,) * dim, dtype=torch.float64)
    expected_outputs, expected_grads = outputs_and_gradients(reference, x)
    outputs, grads = outputs_and_gradients(net, x)
    for expected, output in zip(expected_outputs, outputs, strict=True):
        torch.testing.assert_close(output, expected, rtol=1e-10, atol=1e-10)
    assert grads.keys() == expected_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], rtol=1e-9, atol=1e-10, msg=name)


def test_stream_formulations_share_parameters_and_state_dict_keys():
    keys = None
    nets = {(f, ds): build(3, 4, stream_formulation=f, deep_supervision=ds)
            for f in FORMULATIONS for ds in (True, False)}
    for (formulation, _), net in nets.items():
        assert net.encoder.stream_formulation == formulation
        first = net.encoder.stages[0].convs[0].conv
        assert first.groups == 4 and tuple(first.weight.shape) == (16, 1, 3, 3, 3)  # the grouped weight layout
        shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
        keys = keys or shapes
        assert shapes == keys
    source = nets[("dense", True)]
    for target in nets.values():
        target.load_state_dict(source.state_dict(), strict=True)


def test_stream_formulation_is_validated():
    with pytest.raises(ValueError, match="'grouped', 'split', 'dense'"):
        build(3, 4, stream_formulation="depthwise")
    with pytest.raises(ValueError, match="stream formulation"):
        build(3, 1, stream_formulation="Dense")  # checked also where one stream needs no grouping


def test_grouped_conv_op_classes_are_cached_and_keep_the_conv_type():
    from nnunet_mem_cif.architectures.grouped_conv import grouped_conv_op
    for formulation in FORMULATIONS:
        op = grouped_conv_op(nn.Conv3d, 4, formulation)
        assert op is grouped_conv_op(nn.Conv3d, 4, formulation=formulation)
        assert issubclass(op, nn.Conv3d) and op(8, 8, 3).groups == 4
        assert grouped_conv_op(nn.Conv3d, 1, formulation) is nn.Conv3d
    assert len({grouped_conv_op(nn.Conv2d, 2, f) for f in FORMULATIONS}) == 3


@pytest.mark.parametrize("formulation", FORMULATIONS)
def test_streams_see_only_their_own_modality_without_cif(formulation):
    """Without CIF nothing may mix the streams before the fused skips: changing modality 2 changes stream 2 only,
    at every encoder stage (forward) and in the weights of stream 2 only (backward)."""
    net = build(3, 4, use_cif=False, stream_formulation=formulation).double()
    features = []
    for mem in net.encoder.mem:
        mem.register_forward_hook(lambda module, args, output: features.append(output.detach()))
    x = torch.randn(2, 4, 16, 16, 16, dtype=torch.float64)
    net(x)
    before, features[:] = list(features), []
    x[:, 2] = torch.randn_like(x[:, 2])
    net(x)
    for s, (old, new) in enumerate(zip(before, features, strict=True)):
        c = net.encoder.stream_channels[s]
        changed = (old - new).abs().amax(dim=(0, *range(2, old.ndim))).view(4, c).amax(1)
        assert changed[2] > 0, s
        assert torch.equal(changed[[0, 1, 3]], torch.zeros(3, dtype=changed.dtype)), (s, changed)

    # a loss on stream 0's last-stage features sends gradients into stream 0's weights only
    c = net.encoder.stream_channels[-1]
    out = x
    for stage, mem in zip(net.encoder.stages, net.encoder.mem):
        out = mem(stage(out))
    out[:, :c].square().sum().backward()
    for s, stage in enumerate(net.encoder.stages):
        for conv in (block.conv for block in stage.convs):
            per_stream = conv.weight.grad.view(4, -1).abs().amax(1)
            assert per_stream[0] > 0 and torch.equal(per_stream[1:], torch.zeros(3, dtype=per_stream.dtype)), s


def test_channels_last_layout_gives_the_same_outputs():
    """channels_last_3d is a layout of the whole network and input (measured by the stream benchmark)."""
    net = build(3, 4)
    x = torch.randn(2, 4, 16, 16, 16)
    expected = net(x)
    outputs = net.to(memory_format=torch.channels_last_3d)(x.to(memory_format=torch.channels_last_3d))
    for e, o in zip(expected, outputs, strict=True):
        torch.testing.assert_close(o, e, rtol=1e-4, atol=1e-5)
