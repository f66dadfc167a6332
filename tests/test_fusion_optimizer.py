"""MEM and CIF in optimizer groups of their own: lr multipliers, no weight decay, nnU-Net's poly schedule per group."""
import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from torch import nn

from nnunet_mem_cif.architectures import ComplementaryInformationFusion, MemCifUNet, ModalitySpecificEnhancement
from nnunet_mem_cif.trainers.fusion_optimizer import fusion_optimizer, fusion_parameter_groups

MULTIPLIERS = {ModalitySpecificEnhancement: 30.0, ComplementaryInformationFusion: 150.0}
KWARGS = dict(input_channels=4, n_stages=3, features_per_stage=[8, 16, 32], conv_op=nn.Conv3d, kernel_sizes=3,
              strides=[1, 2, 2], n_conv_per_stage=1, num_classes=3, n_conv_per_stage_decoder=1, conv_bias=True,
              norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU,
              nonlin_kwargs={"inplace": True}, deep_supervision=False)


def parameter_ids(network: nn.Module, module_type) -> set:
    return {id(p) for m in network.modules() if isinstance(m, module_type) for p in m.parameters()}


def test_groups_split_mem_and_cif_from_everything_else():
    network = MemCifUNet(**KWARGS)
    groups = fusion_parameter_groups(network, 1e-2, 3e-5, MULTIPLIERS)
    assert len(groups) == 3
    rest, mem, cif = groups
    assert {id(p) for p in mem["params"]} == parameter_ids(network, ModalitySpecificEnhancement)
    assert {id(p) for p in cif["params"]} == parameter_ids(network, ComplementaryInformationFusion)
    assert (mem["lr"], mem["weight_decay"], mem["lr_scale"]) == (pytest.approx(0.3), 0.0, 30.0)
    assert (cif["lr"], cif["weight_decay"], cif["lr_scale"]) == (pytest.approx(1.5), 0.0, 150.0)
    assert (rest["lr"], rest["weight_decay"], rest["lr_scale"]) == (1e-2, 3e-5, 1.0)
    every = [id(p) for p in network.parameters()]
    assert sorted(every) == sorted(id(p) for g in groups for p in g["params"])  # each parameter exactly once


def test_a_network_without_mem_and_cif_keeps_one_group():
    groups = fusion_parameter_groups(PlainConvUNet(**KWARGS), 1e-2, 3e-5, MULTIPLIERS)
    assert len(groups) == 1 and groups[0]["weight_decay"] == 3e-5


def test_multiplier_must_be_positive():
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="multiplier"):
            fusion_parameter_groups(MemCifUNet(**KWARGS), 1e-2, 3e-5, {ModalitySpecificEnhancement: bad})


def test_poly_schedule_scales_each_group():
    network = MemCifUNet(**KWARGS)
    optimizer, scheduler = fusion_optimizer(fusion_parameter_groups(network, 1e-2, 3e-5, MULTIPLIERS), 1e-2, 3e-5,
                                            10)
    for epoch in range(10):
        scheduler.step(epoch)
        poly = 1e-2 * (1 - epoch / 10) ** 0.9
        assert optimizer.param_groups[0]["lr"] == pytest.approx(poly)  # nnU-Net logs group 0's lr
        assert scheduler.get_last_lr() == [pytest.approx(poly), pytest.approx(30 * poly), pytest.approx(150 * poly)]


def test_weight_decay_no_longer_moves_the_gate_bias():
    """Without gradients, nnU-Net's decay would pull CIF's gate bias towards 0; in the fusion group it stays."""
    network = MemCifUNet(**KWARGS)
    optimizer, _ = fusion_optimizer(fusion_parameter_groups(network, 1e-2, 3e-5, MULTIPLIERS), 1e-2, 3e-5, 10)
    cif = network.encoder.cif[0]
    conv = network.encoder.stages[0].convs[0].conv
    bias, weight = cif.gate_bias.detach().clone(), conv.weight.detach().clone()
    for _ in range(20):
        for p in network.parameters():
            p.grad = torch.zeros_like(p)
        optimizer.step()
    assert torch.equal(cif.gate_bias, bias)
    assert conv.weight.norm() < weight.norm()  # the convolutions still decay, as in nnU-Net
