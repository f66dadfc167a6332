"""Ramp-up, EMA teacher, consistency loss, cross-modal perturbation, labeled subset."""
import math

import numpy as np
import pytest
import torch
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from torch import nn

from nnunet_mem_cif.architectures import MemCifUNet
from nnunet_mem_cif.ssl.consistency import MaskedProbabilityMSE, SemiSupervisedLoss, sigmoid_rampup
from nnunet_mem_cif.ssl.ema import EMATeacher, ema_decay_at
from nnunet_mem_cif.splits import split_labeled_fraction
from nnunet_mem_cif.ssl.perturbation import CrossModalPerturbation, WeakStrongViews, modality_keep_mask, \
    shift_with_zero_fill


def test_sigmoid_rampup_values():
    assert sigmoid_rampup(0, 100) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(50, 100) == pytest.approx(math.exp(-5 * 0.25))
    assert sigmoid_rampup(100, 100) == 1.0
    assert sigmoid_rampup(1000, 100) == 1.0
    assert sigmoid_rampup(3, 0) == 1.0
    values = [sigmoid_rampup(t, 100) for t in range(101)]
    assert all(a < b for a, b in zip(values, values[1:]))


def test_ema_update_maths():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    teacher = EMATeacher(student)
    before = [p.clone() for p in teacher.module.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
        student[1].running_mean.fill_(7.0)
    teacher.update(student, decay=0.9)
    for old, new, s in zip(before, teacher.module.parameters(), student.parameters()):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * s)
    assert torch.all(teacher.module[1].running_mean == 7.0)  # buffers are copied
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.module.training  # the teacher never leaves eval mode


def test_ema_decay_warmup():
    assert ema_decay_at(0, 0.99) == 0.0
    assert ema_decay_at(1, 0.99) == 0.5
    assert ema_decay_at(10_000, 0.99) == 0.99


def test_consistency_zero_for_identical_inputs_and_masked_outside():
    loss = MaskedProbabilityMSE(use_sigmoid=True)
    logits = torch.randn(2, 3, 4, 4, 4)
    mask = torch.ones(2, 4, 4, 4, dtype=torch.bool)
    assert loss(logits, logits.clone(), mask) == 0
    different = logits.clone()
    mask[:, :2] = False
    different[:, :, :2] += 10.0  # differs only outside the mask
    assert loss(different, logits, mask) == 0
    different[:, :, 3] -= 10.0  # and now inside
    assert loss(different, logits, mask) > 0


def test_consistency_value_and_gradient_flow():
    loss = MaskedProbabilityMSE(use_sigmoid=False)
    student = torch.zeros(1, 2, 2, 2, requires_grad=True)  # softmax -> 0.5 / 0.5
    teacher = torch.tensor([[[[0.0, 0.0], [0.0, 0.0]], [[math.log(3), 0.0], [0.0, 0.0]]]], requires_grad=True)
    mask = torch.tensor([[[True, False], [False, False]]])
    value = loss(student, teacher, mask)
    assert value.item() == pytest.approx(0.25 ** 2)  # teacher probs 0.25 / 0.75 at the one masked voxel
    value.backward()
    assert student.grad.abs().sum() > 0 and teacher.grad is None


def test_two_pass_semi_supervised_step_equals_one_pass_over_the_joint_batch():
    """Consistency gradients computed ahead and put into .grad by the loss, as in the trainer's step, give the
    gradients and the loss value of one student pass over cat(labeled, unlabeled) (instance norm: no batch stats)."""
    torch.manual_seed(0)
    kwargs = dict(input_channels=2, n_stages=3, features_per_stage=[4, 8, 8], conv_op=nn.Conv2d, kernel_sizes=3,
                  strides=[1, 2, 2], n_conv_per_stage=1, num_classes=3, n_conv_per_stage_decoder=1, conv_bias=True,
                  norm_op=nn.InstanceNorm2d, norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU,
                  deep_supervision=True)
    student, teacher = MemCifUNet(**kwargs), MemCifUNet(**kwargs)
    ds_weights = (1.0, 0.5)
    supervised = DeepSupervisionWrapper(lambda out, tgt: (out - tgt).abs().mean(), ds_weights)
    loss = SemiSupervisedLoss(supervised, DeepSupervisionWrapper(MaskedProbabilityMSE(True), ds_weights))
    labeled, strong = torch.randn(2, 2, 16, 16), torch.randn(3, 2, 16, 16)
    target = [torch.rand(2, 3, 16, 16), torch.rand(2, 3, 8, 8)]
    masks = [torch.rand(3, 1, 16, 16) > 0.3, torch.rand(3, 1, 8, 8) > 0.3]
    with torch.no_grad():
        teacher_output = teacher(strong + 0.1)[:2]
    weight = 0.7

    joint = student(torch.cat((labeled, strong)))[:2]
    expected = supervised([o[:2] for o in joint], target) + weight * loss.consistency([o[2:] for o in joint],
                                                                                    teacher_output, masks)
    expected_gradients = torch.autograd.grad(expected, list(student.parameters()))

    parameters = list(student.parameters())
    consistency = loss.consistency(student(strong)[:2], teacher_output, masks)
    gradients = torch.autograd.grad(weight * consistency, parameters, allow_unused=True)
    loss.prepare_unlabeled(parameters, gradients, consistency, weight)
    student.zero_grad(set_to_none=True)  # what nnU-Net's train_step does first
    total = loss(student(labeled)[:2], target)
    total.backward()
    torch.testing.assert_close(total, expected.detach())
    for parameter, gradient in zip(parameters, expected_gradients):
        torch.testing.assert_close(parameter.grad, gradient, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(loss.last_consistency, consistency.detach())
    # the preparation is used once: the next call (e.g. validation) is supervised only
    assert loss._unlabeled is None
    output = student(labeled)[:2]
    torch.testing.assert_close(loss(output, target), supervised(output, target))


def test_modality_dropout_keeps_at_least_one():
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        keep = modality_keep_mask(4, 0.9, generator)
        assert keep.any()
    assert modality_keep_mask(4, 0.0, generator).all()
    assert modality_keep_mask(4, 1.0, generator).sum() == 1


def test_shift_with_zero_fill():
    image = torch.arange(1, 10, dtype=torch.float32).view(3, 3)
    shifted = shift_with_zero_fill(image, (1, -1))
    assert torch.equal(shifted, torch.tensor([[0, 0, 0], [2, 3, 0], [5, 6, 0]], dtype=torch.float32))
    assert torch.equal(shift_with_zero_fill(image, (0, 0)), image)


def test_weak_strong_views_stack_channels_and_perturb_only_the_strong_view():
    torch.manual_seed(0)
    image = torch.randn(4, 6, 7, 8)
    views = WeakStrongViews(CrossModalPerturbation(drop_probability=0.5))(image=image.clone())["image"]
    assert views.shape == (8, 6, 7, 8)
    assert torch.equal(views[:4], image)
    assert not torch.equal(views[4:], image)
    dropped = [c for c in range(4) if torch.all(views[4 + c] == 0)]
    assert len(dropped) < 4


def test_perturbation_without_dropout_or_shift_is_a_per_modality_affine_map():
    torch.manual_seed(1)
    image = torch.randn(3, 5, 5)
    strong = CrossModalPerturbation(drop_probability=0.0, max_shift_voxels=0)(image=image.clone())["image"]
    for c in range(3):
        slope = np.polyfit(image[c].flatten().numpy(), strong[c].flatten().numpy(), 1)[0]
        assert 0.9 <= slope <= 1.1


def test_labeled_fraction_split_is_seeded_and_disjoint():
    cases = [f"case_{i:03d}" for i in range(200)]
    labeled, unlabeled = split_labeled_fraction(cases, 0.05, seed=3)
    assert len(labeled) == 10 and len(unlabeled) == 190
    assert set(labeled).isdisjoint(unlabeled) and set(labeled) | set(unlabeled) == set(cases)
    assert split_labeled_fraction(list(reversed(cases)), 0.05, seed=3) == (labeled, unlabeled)
    assert split_labeled_fraction(cases, 0.05, seed=4)[0] != labeled
    assert split_labeled_fraction(cases[:5], 0.01, seed=3)[0].__len__() == 1  # at least one labeled case
    with pytest.raises(ValueError):
        split_labeled_fraction(cases, 0.0, seed=3)


def test_a_never_dropped_modality_is_kept_in_every_strong_view():
    torch.manual_seed(0)
    image = torch.ones(4, 6, 6, 6)
    perturbation = CrossModalPerturbation(drop_probability=0.9, max_shift_voxels=0, never_dropped=(1,))
    views = [perturbation(image=image.clone())["image"] for _ in range(50)]
    assert all(view[1].abs().sum() > 0 for view in views)  # T1ce (channel 1) always there
    assert sum(bool(view[c].abs().sum() == 0) for view in views for c in (0, 2, 3)) > 50  # the others dropped often


def test_consistency_with_a_mask_per_output_channel_averages_over_the_asked_values_only():
    loss = MaskedProbabilityMSE(use_sigmoid=True)
    teacher = torch.zeros(2, 3, 4, 4)  # sigmoid 0.5 everywhere
    student = torch.zeros(2, 3, 4, 4)
    student[1, 2] = 100.0  # sample 1, channel 2: squared difference 0.25 at every voxel
    per_channel = torch.ones(2, 3, 4, 4, dtype=torch.bool)
    assert loss(student, teacher, per_channel).item() == pytest.approx(0.25 / 6)  # 1 of 6 (sample, channel) maps
    per_channel[1, 2] = False  # that channel is not asked of that sample
    assert loss(student, teacher, per_channel).item() == 0
    shared = torch.ones(2, 1, 4, 4, dtype=torch.bool)  # one mask for every channel: the same mean as all-ones
    assert loss(student, teacher, shared).item() == pytest.approx(0.25 / 6)
