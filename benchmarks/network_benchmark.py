"""MemCifUNet vs nnU-Net's PlainConvUNet, built from the same plans kwargs: parameters, forward+backward time and
peak memory (CUDA: torch's allocator; CPU: resident set of a fresh process per network).

Prints a markdown table. Runs are interleaved (plain, memcif, plain, ...) and the median is reported, because a
shared 2-core machine is noisy; compare the ratios, not the seconds.

    python benchmarks/network_benchmark.py                       # BraTS-like 3D patch, 4 modalities, CPU
    python benchmarks/network_benchmark.py --patch 128 128 128 --batch 2 --device cuda
"""
import argparse
import statistics
from functools import partial

import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from torch import nn

from nnunet_mem_cif.architectures import MemCifUNet
from nnunet_mem_cif.measure import PeakMemory, in_fresh_process, interleaved_seconds


def brats_like_kwargs(num_modalities: int, num_classes: int) -> dict:
    """What nnU-Net 2.8 plans for BraTS 3d_fullres (6 stages, 32..320 features, instance norm, leaky ReLU)."""
    return dict(input_channels=num_modalities, n_stages=6, features_per_stage=[32, 64, 128, 256, 320, 320],
                conv_op=nn.Conv3d, kernel_sizes=[[3, 3, 3]] * 6, strides=[[1, 1, 1]] + [[2, 2, 2]] * 5,
                n_conv_per_stage=[2] * 6, num_classes=num_classes, n_conv_per_stage_decoder=[2] * 5, conv_bias=True,
                norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True}, dropout_op=None,
                dropout_op_kwargs=None, nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=True)


VARIANTS = {
    "PlainConvUNet (nnU-Net)": lambda kwargs: PlainConvUNet(**kwargs),
    "MemCifUNet": lambda kwargs: MemCifUNet(**kwargs),
    "MemCifUNet use_mem=False": lambda kwargs: MemCifUNet(**kwargs, use_mem=False),
    "MemCifUNet use_cif=False": lambda kwargs: MemCifUNet(**kwargs, use_cif=False),
}


def forward_backward(network: nn.Module, batch: torch.Tensor) -> None:
    # mixed precision on CUDA, as nnUNetTrainer.train_step trains there
    with torch.autocast(batch.device.type, enabled=batch.device.type == "cuda"):
        outputs = network(batch)
    sum(o.float().square().mean() for o in outputs).backward()
    network.zero_grad(set_to_none=True)


def peak_memory_mib(name: str, num_modalities: int, batch_size: int, patch, device_name: str) -> float:
    """First forward+backward of a freshly built network (run in a fresh process: see PeakMemory)."""
    torch.manual_seed(0)
    device = torch.device(device_name)
    network = VARIANTS[name](brats_like_kwargs(num_modalities, 3)).to(device)
    batch = torch.randn(batch_size, num_modalities, *patch, device=device)
    with PeakMemory(device) as peak:
        forward_backward(network, batch)
    return peak.mib


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
    device = torch.device(args.device)
    networks = {name: build(kwargs).to(device) for name, build in VARIANTS.items()}
    batch = torch.randn(args.batch, args.modalities, *args.patch, device=device)
    peak_memory = {name: in_fresh_process(peak_memory_mib, name, args.modalities, args.batch, args.patch,
                                          args.device) for name in networks}
    times = interleaved_seconds({name: partial(forward_backward, network, batch) for name, network in networks.items()},
                                args.repeats, device)

    base_name = "PlainConvUNet (nnU-Net)"
    base_params = sum(p.numel() for p in networks[base_name].parameters())
    base_time = statistics.median(times[base_name])
    print(f"device {device}, batch {args.batch} x {args.modalities} modalities x {tuple(args.patch)}, "
          f"median of {args.repeats} interleaved runs, torch {torch.__version__}, threads {torch.get_num_threads()}")
    memory_kind = "CUDA allocator" if device.type == "cuda" else "resident set"
    print(f"| network | parameters | param ratio | fwd+bwd [s] | time ratio | peak memory ({memory_kind}) [MiB] | "
          f"memory ratio |")
    print("|---|---|---|---|---|---|---|")
    for name, network in networks.items():
        params = sum(p.numel() for p in network.parameters())
        seconds = statistics.median(times[name])
        print(f"| {name} | {params / 1e6:.2f} M | {params / base_params:.2f} | {seconds:.2f} | "
              f"{seconds / base_time:.2f} | {peak_memory[name]:.0f} | {peak_memory[name] / peak_memory[base_name]:.2f} |")


if __name__ == "__main__":
    main()
