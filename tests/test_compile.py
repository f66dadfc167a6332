"""torch.compile (nnU-Net's default on CUDA) of MemCifUNet: one graph, and the same numbers as eager mode.

Runs inductor on the CPU (a C++ compiler is needed; about 40 s the first time)."""
import pytest
import torch
import torch._dynamo
from torch import nn

from nnunet_mem_cif.architectures import MemCifUNet

KWARGS = dict(input_channels=4, n_stages=3, features_per_stage=[8, 16, 32], conv_op=nn.Conv3d, kernel_sizes=3,
              strides=[1, 2, 2], n_conv_per_stage=1, num_classes=3, n_conv_per_stage_decoder=1, conv_bias=True,
              norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU,
              nonlin_kwargs={"inplace": True}, deep_supervision=True)


def loss_and_gradients(network: nn.Module, parameters: list, x: torch.Tensor):
    outputs = network(x)
    loss = sum(o.square().mean() for o in outputs)
    return outputs, torch.autograd.grad(loss, parameters)


@pytest.mark.slow
@pytest.mark.e2e
def test_memcif_unet_compiles_without_graph_breaks_and_matches_eager():
    torch.manual_seed(0)
    network = MemCifUNet(**KWARGS)
    network.apply(network.initialize)
    with torch.no_grad():  # a CIF that exchanges and a MEM that scales, so that both paths are exercised
        for cif in network.encoder.cif:
            cif.mixing_logits.normal_()
            cif.gate_bias.normal_()
    x = torch.randn(2, 4, 16, 16, 16)
    explanation = torch._dynamo.explain(network)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1

    parameters = list(network.parameters())
    torch._dynamo.reset()
    compiled = torch.compile(network, fullgraph=True)
    outputs, gradients = loss_and_gradients(compiled, parameters, x)
    reference_outputs, reference_gradients = loss_and_gradients(network, parameters, x)
    for output, reference in zip(outputs, reference_outputs):
        torch.testing.assert_close(output, reference, rtol=1e-4, atol=1e-5)
    # fp32 tolerance relative to the gradient's overall scale: conv biases followed by instance norm have (almost)
    # zero gradient, where an elementwise relative comparison would only compare rounding noise
    scale = max(g.abs().max() for g in reference_gradients)
    for (name, _), gradient, reference in zip(network.named_parameters(), gradients, reference_gradients):
        torch.testing.assert_close(gradient, reference, rtol=1e-3, atol=1e-4 * scale, msg=name)
