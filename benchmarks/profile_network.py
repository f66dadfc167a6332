"""Where MemCifUNet's extra forward+backward time goes: torch.profiler, self time per operator, side by side with
nnU-Net's PlainConvUNet (same BraTS-like plans kwargs and the same training settings as network_benchmark.py:
cudnn.benchmark, fp16 autocast + GradScaler on CUDA, ``--compile``).

    python benchmarks/profile_network.py --patch 64 64 64
"""
import argparse
from collections import defaultdict

import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from torch.profiler import ProfilerActivity, profile

from network_benchmark import ForwardBackward, apply_training_settings, brats_like_kwargs, maybe_compile, \
    settings_header
from nnunet_mem_cif.architectures import MemCifUNet


def self_seconds_by_operator(network: torch.nn.Module, batch: torch.Tensor) -> dict:
    step = ForwardBackward(network, batch.device)
    step(batch)  # warm-up (cuDNN autotuning, compilation)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if batch.is_cuda else [])
    with profile(activities=activities) as prof:
        step(batch)
    totals = defaultdict(float)
    for event in prof.key_averages():
        device_time = getattr(event, "self_device_time_total", 0) if batch.is_cuda else 0
        totals[event.key] += (device_time or event.self_cpu_time_total) / 1e6
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patch", type=int, nargs=3, default=[64, 64, 64])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rows", type=int, default=12)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", action="store_true", help="torch.compile both networks (nnU-Net's CUDA default)")
    args = parser.parse_args()
    apply_training_settings()
    torch.manual_seed(0)
    device = torch.device(args.device)
    kwargs = brats_like_kwargs(4, 3)
    batch = torch.randn(args.batch, 4, *args.patch, device=device)
    plain = self_seconds_by_operator(maybe_compile(PlainConvUNet(**kwargs).to(device), args.compile), batch)
    ours = self_seconds_by_operator(maybe_compile(MemCifUNet(**kwargs).to(device), args.compile), batch)
    print(settings_header(device, args.compile))
    print(f"device {device}, batch {args.batch} x 4 x {tuple(args.patch)}: total self time PlainConvUNet "
          f"{sum(plain.values()):.2f} s, MemCifUNet {sum(ours.values()):.2f} s")
    print("| operator | PlainConvUNet [s] | MemCifUNet [s] | extra [s] |\n|---|---|---|---|")
    for op in sorted(ours, key=lambda k: plain.get(k, 0.0) - ours[k])[:args.rows]:
        print(f"| {op} | {plain.get(op, 0.0):.3f} | {ours[op]:.3f} | {ours[op] - plain.get(op, 0.0):+.3f} |")


if __name__ == "__main__":
    main()
