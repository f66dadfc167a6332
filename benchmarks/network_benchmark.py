"""MemCifUNet vs nnU-Net's PlainConvUNet, built from the same plans kwargs: parameters, forward+backward time and
peak memory, measured the way nnU-Net trains.

nnU-Net's run_training sets ``cudnn.benchmark = True``; on CUDA its train_step runs under fp16 autocast with a
GradScaler (scaled loss, backward, unscale, gradient clipping) and the network is wrapped in ``torch.compile`` by
default. A timing taken otherwise (fp32, no autotuning, eager) can rank the networks differently from what a user
sees, so every setting is applied here and named in the printed header; ``--compile`` switches compilation on.

Prints a markdown table. Runs are interleaved (plain, memcif, plain, ...) and the median is reported, because a
shared machine is noisy; compare the ratios, not the seconds. Peak memory: CUDA from torch's allocator, CPU from the
resident set of a fresh process per network (``--memory``).

    python benchmarks/network_benchmark.py                       # BraTS-like 3D patch, 4 modalities, CPU
    python benchmarks/network_benchmark.py --patch 128 128 128 --batch 2 --device cuda --compile
"""
import argparse
import platform
import statistics
from functools import partial
from typing import Callable, Dict, List, Optional, Sequence

import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from torch import nn

from nnunet_mem_cif.architectures import MemCifUNet
from nnunet_mem_cif.measure import PeakMemory, in_fresh_process, interleaved_seconds, synchronize


def brats_like_kwargs(num_modalities: int, num_classes: int) -> dict:
    """What nnU-Net 2.8 plans for BraTS 3d_fullres (6 stages, 32..320 features, instance norm, leaky ReLU)."""
    return dict(input_channels=num_modalities, n_stages=6, features_per_stage=[32, 64, 128, 256, 320, 320],
                conv_op=nn.Conv3d, kernel_sizes=[[3, 3, 3]] * 6, strides=[[1, 1, 1]] + [[2, 2, 2]] * 5,
                n_conv_per_stage=[2] * 6, num_classes=num_classes, n_conv_per_stage_decoder=[2] * 5, conv_bias=True,
                norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True}, dropout_op=None,
                dropout_op_kwargs=None, nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=True)


BASELINE = "PlainConvUNet (nnU-Net)"
VARIANTS: Dict[str, Callable[[dict], nn.Module]] = {
    BASELINE: lambda kwargs: PlainConvUNet(**kwargs),
    "MemCifUNet": lambda kwargs: MemCifUNet(**kwargs),
    "MemCifUNet use_mem=False": lambda kwargs: MemCifUNet(**kwargs, use_mem=False),
    "MemCifUNet use_cif=False": lambda kwargs: MemCifUNet(**kwargs, use_cif=False),
}
SHORT_NAMES = {"plain": BASELINE, "memcif": "MemCifUNet", "no_mem": "MemCifUNet use_mem=False",
               "no_cif": "MemCifUNet use_cif=False"}


# ---------------------------------------------------------------------------------------------- nnU-Net's settings
def apply_training_settings() -> None:
    """What nnU-Net's run_training sets before training: cuDNN autotunes each convolution shape once (first call)
    and may pick non-deterministic algorithms. Call it in every process that measures, fresh ones included."""
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.deterministic = False


def maybe_compile(network: nn.Module, compile_network: bool) -> nn.Module:
    """``torch.compile(network)`` with nnU-Net's (default) options when asked, else the network itself."""
    return torch.compile(network) if compile_network else network


def uses_amp(device: torch.device) -> bool:
    """nnU-Net trains under fp16 autocast + GradScaler on CUDA only (on the CPU it runs fp32)."""
    return device.type == "cuda"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def settings_header(device: torch.device, compile_network: bool) -> str:
    """One line naming everything that decides what a timing means: device, versions, precision, compile, cuDNN."""
    cudnn = torch.backends.cudnn.version() if device.type == "cuda" and torch.backends.cudnn.is_available() \
        else "unused"
    amp = "fp16 autocast + GradScaler" if uses_amp(device) else "fp32 (no autocast: nnU-Net's CPU setting)"
    return (f"device {device} ({device_name(device)}), torch {torch.__version__}, CUDA {torch.version.cuda}, "
            f"cuDNN {cudnn}, {amp}, torch.compile {'on' if compile_network else 'off'}, "
            f"cudnn.benchmark {torch.backends.cudnn.benchmark}")


class ForwardBackward:
    """One forward+backward of ``network`` as nnUNetTrainer.train_step runs it, without the optimizer step.

    ``zero_grad(set_to_none=True)``; forward and loss under fp16 autocast on CUDA; ``GradScaler.scale(loss)
    .backward()``, ``unscale_`` and gradient clipping at 12; ``update`` (the scaler's bookkeeping). The loss is a
    stand-in of nnU-Net's (mean squares of every deep-supervision output), so that only the network differs between
    rows. The optimizer step is left out: it costs the same per parameter for every network and is part of the
    training-step benchmark (cost_benchmark.py); the SGD optimizer exists for ``unscale_``, which needs one.
    """

    def __init__(self, network: nn.Module, device: torch.device):
        self.network = network
        self.device = device
        self.amp = uses_amp(device)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp else None
        self.optimizer = torch.optim.SGD(network.parameters(), lr=1e-2, momentum=0.99, nesterov=True) \
            if self.amp else None

    def __call__(self, batch: torch.Tensor) -> None:
        self.network.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, enabled=self.amp):
            outputs = self.network(batch)
            outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
            loss = sum(o.float().square().mean() for o in outputs)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)


def peak_memory_of(step: Callable[[], object], device: torch.device) -> float:
    """Peak MiB of ``step()``. CUDA: the second call, so that cuDNN's autotuning (its trial workspaces) and
    compilation are done and the number is the steady state a training batch needs. CPU: the first call, which is
    only meaningful in a fresh process (see PeakMemory)."""
    if device.type == "cuda":
        step()
        synchronize(device)
    with PeakMemory(device) as peak:
        step()
    return peak.mib


def build_variant(name: str, kwargs: dict) -> nn.Module:
    """One of VARIANTS by name (a module-level function, so that fresh processes can be handed it)."""
    return VARIANTS[name](kwargs)


def memory_format(channels_last: bool, spatial_dims: int) -> torch.memory_format:
    if not channels_last:
        return torch.contiguous_format
    return torch.channels_last_3d if spatial_dims == 3 else torch.channels_last


def peak_memory_mib(name: str, num_modalities: int, batch_size: int, patch: Sequence[int], device_name_: str,
                    compile_network: bool = False, builder: Callable[[str, dict], nn.Module] = build_variant,
                    channels_last: bool = False) -> float:
    """Peak memory of one network's forward+backward, under the same settings as the timings; meant to run in a
    fresh process (``in_fresh_process``) so that nothing measured before counts. ``builder(name, kwargs)`` makes the
    network; ``channels_last`` puts network and batch into the channels-last layout."""
    apply_training_settings()
    torch.manual_seed(0)
    device = torch.device(device_name_)
    layout = memory_format(channels_last, len(patch))
    network = builder(name, brats_like_kwargs(num_modalities, 3)).to(device, memory_format=layout)
    network = maybe_compile(network, compile_network)
    batch = torch.randn(batch_size, num_modalities, *patch, device=device).to(memory_format=layout)
    return peak_memory_of(partial(ForwardBackward(network, device), batch), device)


def add_settings_arguments(parser: argparse.ArgumentParser, patch: Sequence[int] = (96, 96, 96)) -> None:
    """The arguments every network benchmark shares."""
    parser.add_argument("--patch", type=int, nargs=3, default=list(patch))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--modalities", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", action="store_true",
                        help="wrap every network in torch.compile, as nnU-Net does on CUDA by default")
    parser.add_argument("--memory", choices=["fresh", "inline", "none"], default="fresh",
                        help="peak memory: in a fresh process per network (default), in this process after the "
                             "timings (CUDA only: the allocator's peak is per tensor, so earlier work does not count; "
                             "saves compiling every network twice), or not at all")


def measure_peaks(names: List[str], steps: Dict[str, Callable[[], object]], fresh: Callable[[str], float],
                  mode: str, device: torch.device) -> Dict[str, float]:
    """Peak memory per network as ``--memory`` asks: ``fresh(name)`` in a new process, or ``steps[name]`` here."""
    if mode == "none":
        return {name: float("nan") for name in names}
    if mode == "inline":
        if device.type != "cuda":
            raise SystemExit("--memory inline needs CUDA: a CPU process's resident set keeps what earlier work used")
        return {name: peak_memory_of(steps[name], device) for name in names}
    return {name: in_fresh_process(fresh, name) for name in names}


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_settings_arguments(parser)
    parser.add_argument("--variants", nargs="+", choices=list(SHORT_NAMES), default=list(SHORT_NAMES),
                        help="networks to measure (PlainConvUNet is always measured: it is the reference)")
    args = parser.parse_args(argv)

    apply_training_settings()
    torch.manual_seed(0)
    kwargs = brats_like_kwargs(args.modalities, 3)
    device = torch.device(args.device)
    names = list(dict.fromkeys([BASELINE] + [SHORT_NAMES[v] for v in args.variants]))
    networks = {name: maybe_compile(build_variant(name, kwargs).to(device), args.compile) for name in names}
    batch = torch.randn(args.batch, args.modalities, *args.patch, device=device)
    steps = {name: partial(ForwardBackward(network, device), batch) for name, network in networks.items()}
    fresh = partial(_fresh_peak, args.modalities, args.batch, args.patch, args.device, args.compile)
    times = interleaved_seconds(steps, args.repeats, device)
    peak_memory = measure_peaks(names, steps, fresh, args.memory, device)

    base_params = sum(p.numel() for p in networks[BASELINE].parameters())
    base_time = statistics.median(times[BASELINE])
    print(settings_header(device, args.compile))
    print(f"batch {args.batch} x {args.modalities} modalities x {tuple(args.patch)}, median of {args.repeats} "
          f"interleaved runs after one warm-up; peak memory: {args.memory}")
    memory_kind = "CUDA allocator" if device.type == "cuda" else "resident set"
    print(f"| network | parameters | param ratio | fwd+bwd [s] | time ratio | peak memory ({memory_kind}) [MiB] | "
          f"memory ratio |")
    print("|---|---|---|---|---|---|---|")
    for name, network in networks.items():
        params = sum(p.numel() for p in network.parameters())
        seconds = statistics.median(times[name])
        print(f"| {name} | {params / 1e6:.2f} M | {params / base_params:.2f} | {seconds:.3f} | "
              f"{seconds / base_time:.2f} | {peak_memory[name]:.0f} | "
              f"{peak_memory[name] / peak_memory[BASELINE]:.2f} |")


def _fresh_peak(num_modalities: int, batch_size: int, patch: Sequence[int], device_name_: str, compile_network: bool,
                name: str) -> float:
    return peak_memory_mib(name, num_modalities, batch_size, patch, device_name_, compile_network)


if __name__ == "__main__":
    main()
