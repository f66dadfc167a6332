"""MemCifUNet vs nnU-Net's PlainConvUNet, built from the same plans kwargs: parameters and forward+backward time.

Prints a markdown table. Runs are interleaved (plain, memcif, plain, ...) and the median is reported, because a
shared 2-core machine is noisy; compare the ratios, not the seconds.

    python benchmarks/network_benchmark.py                       # BraTS-like 3D patch, 4 modalities, CPU
    python benchmarks/network_benchmark.py --patch 128 128 128 --batch 2 --device cuda
"""
import argparse
import statistics
import time

import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from torch import nn

from nnunet_mem_cif.architectures import MemCifUNet


def brats_like_kwargs(num_modalities: int, num_classes: int) -> dict:
    """What nnU-Net 2.8 plans for BraTS 3d_fullres (6 stages, 32..320 features, instance norm, leaky ReLU)."""
    return dict(input_channels=num_modalities, n_stages=6, features_per_stage=[32, 64, 128, 256, 320, 320],
                conv_op=nn.Conv3d, kernel_sizes=[[3, 3, 3]] * 6, strides=[[1, 1, 1]] + [[2, 2, 2]] * 5,
                n_conv_per_stage=[2] * 6, num_classes=num_classes, n_conv_per_stage_decoder=[2] * 5, conv_bias=True,
                norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True}, dropout_op=None,
                dropout_op_kwargs=None, nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=True)


def forward_backward_seconds(network: nn.Module, batch: torch.Tensor) -> float:
    if batch.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    outputs = network(batch)
    sum(o.float().square().mean() for o in outputs).backward()
    network.zero_grad(set_to_none=True)
    if batch.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patch", type=int, nargs=3, default=[96, 96, 96])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--modalities", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    kwargs = brats_like_kwargs(args.modalities, 3)
    networks = {
        "PlainConvUNet (nnU-Net)": PlainConvUNet(**kwargs),
        "MemCifUNet": MemCifUNet(**kwargs),
        "MemCifUNet use_mem=False": MemCifUNet(**kwargs, use_mem=False),
        "MemCifUNet use_cif=False": MemCifUNet(**kwargs, use_cif=False),
    }
    device = torch.device(args.device)
    batch = torch.randn(args.batch, args.modalities, *args.patch, device=device)
    times = {name: [] for name in networks}
    peak_memory = {}
    for name, network in networks.items():
        network.to(device)
        forward_backward_seconds(network, batch)  # warm-up (allocator, oneDNN/cuDNN kernel choice)
    for _ in range(args.repeats):
        for name, network in networks.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            times[name].append(forward_backward_seconds(network, batch))
            if device.type == "cuda":
                peak_memory[name] = torch.cuda.max_memory_allocated() / 2 ** 30

    base_name = "PlainConvUNet (nnU-Net)"
    base_params = sum(p.numel() for p in networks[base_name].parameters())
    base_time = statistics.median(times[base_name])
    print(f"device {device}, batch {args.batch} x {args.modalities} modalities x {tuple(args.patch)}, "
          f"median of {args.repeats} interleaved runs, torch {torch.__version__}, threads {torch.get_num_threads()}")
    header = "| network | parameters | param ratio | fwd+bwd [s] | time ratio |"
    if peak_memory:
        header += " peak CUDA memory [GiB] | memory ratio |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for name, network in networks.items():
        params = sum(p.numel() for p in network.parameters())
        seconds = statistics.median(times[name])
        row = f"| {name} | {params / 1e6:.2f} M | {params / base_params:.2f} | {seconds:.2f} | {seconds / base_time:.2f} |"
        if peak_memory:
            row += f" {peak_memory[name]:.2f} | {peak_memory[name] / peak_memory[base_name]:.2f} |"
        print(row)


if __name__ == "__main__":
    main()
