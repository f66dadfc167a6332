"""How fast can MEM and CIF learn under nnU-Net's optimiser? Relative gradient size per group of parameters.

SGD moves a parameter by about ``lr * |grad|`` per step, so ``|grad| / |param|`` says how many steps a group needs to
change noticeably. This prints its median over the parameter tensors of each group (encoder/decoder convolutions,
MEM, CIF) for a freshly initialised MemCifUNet on the BraTS-like plans of network_benchmark.py, over a few batches
with a synthetic target (cross-entropy, no deep supervision): a diagnostic of the network, not of any dataset.

    python benchmarks/gradient_scale.py [--patch 32 40 32] [--batches 3]
"""
import argparse
import statistics
from collections import defaultdict

import torch
from network_benchmark import brats_like_kwargs
from torch import nn

from nnunet_mem_cif.architectures import MemCifUNet

GROUPS = {"convolutions (encoder and decoder)": lambda name: ".conv" in name and name.endswith("weight"),
          "MEM (channel attention)": lambda name: ".mem." in name,
          "CIF gate weights": lambda name: ".cif." in name and "gate_weight" in name,
          "CIF gate bias": lambda name: ".cif." in name and name.endswith("gate_bias"),
          "CIF mixing logits (start at 0: |grad| shown)": lambda name: ".cif." in name and "mixing" in name}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patch", type=int, nargs=3, default=[32, 40, 32])
    parser.add_argument("--batches", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    kwargs = brats_like_kwargs(4, 4)
    kwargs.update(n_stages=4, features_per_stage=[32, 64, 128, 256], kernel_sizes=[[3, 3, 3]] * 4,
                  strides=[[1, 1, 1]] + [[2, 2, 2]] * 3, n_conv_per_stage=[2] * 4, n_conv_per_stage_decoder=[2] * 3,
                  deep_supervision=False)
    network = MemCifUNet(**kwargs)
    ratios = defaultdict(list)
    for _ in range(args.batches):
        image = torch.randn(2, 4, *args.patch)
        # a target that depends on two modalities, so that exchanging information between them can help
        target = (image[:, 0] > 0.5).long() + (image[:, 1] > 1.0).long() + (image[:, 2] > 1.5).long()
        network.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(network(image), target).backward()
        for name, parameter in network.named_parameters():
            if name.startswith("decoder.encoder.") or parameter.grad is None:
                continue  # the decoder holds a reference to the encoder: count each tensor once
            for group, member in GROUPS.items():
                if member(name):
                    size = parameter.norm().item()
                    ratios[group].append(parameter.grad.norm().item() / (size if "mixing" not in group else 1.0))
    print(f"MemCifUNet (4 stages, 32..256 features, 4 modalities), batch 2 x {tuple(args.patch)}, "
          f"{args.batches} batches; median over each group's tensors")
    print("| parameters | median abs(grad) / abs(param) | tensors |")
    print("|---|---|---|")
    for group in GROUPS:
        print(f"| {group} | {statistics.median(ratios[group]):.1e} | {len(ratios[group]) // args.batches} |")


if __name__ == "__main__":
    main()
