"""How fast MemCifUNet's modality streams run in each formulation, and what CIF costs at each encoder stage.

The M streams are block-diagonal convolutions; which kernel computes them fastest depends on the device and library
(cuDNN's grouped 3D convolutions, M separate convolutions, or one dense convolution with M times the FLOPs on tensor
cores), and the memory layout matters too. The formulations share parameters and state-dict keys, so the fastest one
can be chosen without touching checkpoints; this script measures them against nnU-Net's PlainConvUNet, forward +
backward at the BraTS-like plans of network_benchmark.py, under nnU-Net's training settings (cudnn.benchmark, fp16
autocast + GradScaler on CUDA, ``--compile`` for torch.compile).

Table "streams": one row per formulation (grouped, grouped in channels_last_3d layout, split, dense) and the
reference, time and peak-memory ratios against PlainConvUNet. Table "cif": forward+backward of each stage's
ComplementaryInformationFusion alone, on a feature map of that stage's real size (stream channels x M, patch /
cumulative stride, MEM's channel scale passed as in the network), and its share of the whole MemCifUNet's
forward+backward: where fusing the streams costs, and whether it is worth optimising further.

    python benchmarks/stream_benchmark.py --device cpu --patch 64 64 64 --batch 2 --repeats 3
    python benchmarks/stream_benchmark.py --device cuda --patch 128 128 128 --batch 2 --compile
"""
import argparse
import statistics
from functools import partial
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from network_benchmark import (BASELINE, ForwardBackward, add_settings_arguments, apply_training_settings,
                               brats_like_kwargs, build_variant, maybe_compile, measure_peaks, memory_format,
                               peak_memory_mib, settings_header, uses_amp)
from nnunet_mem_cif.architectures import ComplementaryInformationFusion, MemCifUNet
from nnunet_mem_cif.measure import interleaved_seconds

CHANNELS_LAST = "grouped + channels_last_3d"
STREAM_VARIANTS = ["grouped", CHANNELS_LAST, "split", "dense"]


def row_name(variant: str) -> str:
    return f"MemCifUNet {variant}"


def build_stream_variant(name: str, kwargs: dict) -> nn.Module:
    """PlainConvUNet or ``MemCifUNet <variant>``; the channels-last variant is the grouped network (its layout is
    set where it is moved to the device)."""
    if name == BASELINE:
        return build_variant(name, kwargs)
    variant = name[len(row_name("")):]
    return MemCifUNet(**kwargs, stream_formulation="grouped" if variant == CHANNELS_LAST else variant)


def is_channels_last(name: str) -> bool:
    return name == row_name(CHANNELS_LAST)


def _fresh_peak(num_modalities: int, batch_size: int, patch: Sequence[int], device_name: str, compile_network: bool,
                name: str) -> float:
    return peak_memory_mib(name, num_modalities, batch_size, patch, device_name, compile_network,
                           builder=build_stream_variant, channels_last=is_channels_last(name))


# ---------------------------------------------------------------------------------------------- tables
def streams_table(args: argparse.Namespace, device: torch.device, networks: Dict[str, nn.Module],
                  batch: torch.Tensor) -> List[str]:
    """Interleaved fwd+bwd of every formulation and PlainConvUNet; peak memory as ``--memory`` asks."""
    steps = {}
    for name, network in networks.items():
        layout = memory_format(is_channels_last(name), batch.ndim - 2)
        steps[name] = partial(ForwardBackward(network, device), batch.contiguous(memory_format=layout))
    times = interleaved_seconds(steps, args.repeats, device)
    fresh = partial(_fresh_peak, args.modalities, args.batch, args.patch, args.device, args.compile)
    peaks = measure_peaks(list(networks), steps, fresh, args.memory, device)
    base_time, base_peak = statistics.median(times[BASELINE]), peaks[BASELINE]
    memory_kind = "CUDA allocator" if device.type == "cuda" else "resident set, fresh process"
    lines = ["### Stream formulations (forward+backward)", "",
             f"| network | fwd+bwd [s] | time ratio vs PlainConvUNet | peak memory ({memory_kind}) [MiB] | "
             f"memory ratio |", "|---|---|---|---|---|"]
    for name in networks:
        seconds = statistics.median(times[name])
        lines.append(f"| {name} | {seconds:.3f} | {seconds / base_time:.2f} | {peaks[name]:.0f} | "
                     f"{peaks[name] / base_peak:.2f} |")
    return lines


class CifStep:
    """Forward+backward of one CIF module on a feature map as the encoder hands it over: the stage's output (in
    fp16 under autocast, as the convolutions before it produce it) and MEM's channel scale, both needing
    gradients; backward from a fixed random output gradient, parameter gradients reset each time."""

    def __init__(self, cif: nn.Module, features: torch.Tensor, scale: torch.Tensor, amp: bool):
        self.cif, self.amp = cif, amp
        self.features = features.requires_grad_(True)
        self.scale = scale.requires_grad_(True)
        self.grad_output = torch.randn_like(features)

    def __call__(self) -> None:
        self.features.grad = self.scale.grad = None
        self.cif.zero_grad(set_to_none=True)
        with torch.autocast(self.features.device.type, enabled=self.amp):
            out = self.cif(self.features, channel_scale=self.scale)
        out.backward(self.grad_output)


def cif_stage_steps(kwargs: dict, batch_size: int, patch: Sequence[int], device: torch.device,
                    compile_network: bool) -> Dict[str, Callable[[], None]]:
    """One CifStep per encoder stage, at the real feature-map size (as MemCifEncoder builds its CIF modules)."""
    reference = MemCifUNet(**kwargs).encoder
    m = reference.num_modalities
    amp = uses_amp(device)
    dtype = torch.float16 if amp else torch.float32
    steps, size = {}, np.array(patch)
    for s, (c, stride) in enumerate(zip(reference.stream_channels, reference.strides)):
        size = size // np.array(stride)
        cif = maybe_compile(ComplementaryInformationFusion(m, c).to(device), compile_network)
        features = torch.randn(batch_size, m * c, *size.tolist(), device=device, dtype=dtype)
        scale = torch.rand(batch_size, m * c, *([1] * len(patch)), device=device, dtype=dtype)
        steps[f"stage {s}: ({batch_size}, {m}x{c}, {'x'.join(map(str, size.tolist()))})"] = \
            CifStep(cif, features, scale, amp)
    return steps


def cif_table(args: argparse.Namespace, device: torch.device, network: nn.Module, batch: torch.Tensor) -> List[str]:
    """CIF of each stage alone, interleaved with the whole MemCifUNet (grouped) so that shares are comparable."""
    steps = cif_stage_steps(brats_like_kwargs(args.modalities, 3), args.batch, args.patch, device, args.compile)
    whole = "MemCifUNet fwd+bwd"
    steps[whole] = partial(ForwardBackward(network, device), batch)
    times = interleaved_seconds(steps, args.repeats, device)
    total = statistics.median(times.pop(whole))
    lines = ["### CIF time per encoder stage (forward+backward of ComplementaryInformationFusion alone)", "",
             f"MemCifUNet (grouped) forward+backward: {total * 1e3:.1f} ms", "",
             "| stage: feature map (batch, M x stream channels, spatial) | CIF fwd+bwd [ms] | share of MemCifUNet "
             "fwd+bwd |", "|---|---|---|"]
    for name, values in times.items():
        seconds = statistics.median(values)
        lines.append(f"| {name} | {seconds * 1e3:.1f} | {seconds / total:.1%} |")
    all_stages = sum(statistics.median(v) for v in times.values())
    lines.append(f"| all stages | {all_stages * 1e3:.1f} | {all_stages / total:.1%} |")
    return lines


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_settings_arguments(parser)
    parser.add_argument("--tables", nargs="+", choices=["streams", "cif"], default=["streams", "cif"])
    parser.add_argument("--formulations", nargs="+", choices=STREAM_VARIANTS, default=STREAM_VARIANTS,
                        help="stream variants in the streams table (PlainConvUNet is always the reference)")
    args = parser.parse_args(argv)

    apply_training_settings()
    device = torch.device(args.device)
    kwargs = brats_like_kwargs(args.modalities, 3)
    torch.manual_seed(0)
    batch = torch.randn(args.batch, args.modalities, *args.patch, device=device)
    names = [BASELINE] + [row_name(v) for v in args.formulations] if "streams" in args.tables else []
    if "cif" in args.tables and row_name("grouped") not in names:
        names.append(row_name("grouped"))
    networks = {}
    for name in names:
        layout = memory_format(is_channels_last(name), len(args.patch))
        networks[name] = maybe_compile(build_stream_variant(name, kwargs).to(device, memory_format=layout),
                                       args.compile)

    print(settings_header(device, args.compile))
    print(f"batch {args.batch} x {args.modalities} modalities x {tuple(args.patch)}, BraTS-like plans, median of "
          f"{args.repeats} interleaved runs after one warm-up; peak memory: {args.memory}\n")
    if "streams" in args.tables:
        streams = {name: net for name, net in networks.items()
                   if name == BASELINE or name[len(row_name("")):] in args.formulations}
        print("\n".join(streams_table(args, device, streams, batch)) + "\n", flush=True)
    if "cif" in args.tables:
        print("\n".join(cif_table(args, device, networks[row_name("grouped")], batch)), flush=True)


if __name__ == "__main__":
    main()
