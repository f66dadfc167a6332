"""MemCifUNet: modality-specific encoder streams with MEM and CIF, nnU-Net's UNetDecoder on top."""
from typing import List, Tuple, Type, Union

import numpy as np
import torch
from dynamic_network_architectures.architectures.abstract_arch import AbstractDynamicNetworkArchitectures
from dynamic_network_architectures.building_blocks.helper import convert_conv_op_to_dim, maybe_convert_scalar_to_list
from dynamic_network_architectures.building_blocks.simple_conv_blocks import StackedConvBlocks
from dynamic_network_architectures.building_blocks.unet_decoder import UNetDecoder
from dynamic_network_architectures.initialization.weight_init import InitWeights_He
from torch import nn
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.dropout import _DropoutNd

from nnunet_mem_cif.architectures.cif import ComplementaryInformationFusion
from nnunet_mem_cif.architectures.grouped_conv import check_stream_formulation, grouped_conv_op
from nnunet_mem_cif.architectures.mem import ModalitySpecificEnhancement

IntOrSeq = Union[int, List[int], Tuple[int, ...]]


def _per_stage(value, n_stages: int, name: str) -> list:
    values = [value] * n_stages if isinstance(value, int) else list(value)
    if len(values) != n_stages:
        raise ValueError(f"{name} must have one entry per stage ({n_stages}), got {values}")
    return values


class MemCifEncoder(nn.Module):
    """M modality streams (one grouped convolution per layer), MEM and CIF at every stage, fused skips.

    Stream m of stage s has ``round(features_per_stage[s] * stream_width)`` channels and sees only modality m until
    CIF lets the streams exchange information. The skip handed to the decoder is a 1x1 convolution of the
    concatenated streams back to the plans' width (no norm / nonlinearity: the decoder's first
    conv-norm-nonlin follows right after the concatenation, and two fewer full-size tensors are kept for the
    backward pass), so ``output_channels``, ``strides``, ``conv_op`` ... are exactly
    those of nnU-Net's PlainConvEncoder and dynamic_network_architectures' UNetDecoder can be used unchanged.

    ``stream_formulation`` (one of STREAM_FORMULATIONS) picks how the streams' convolutions are computed: one grouped
    convolution, M convolutions on channel chunks, or one dense convolution with a block-diagonal weight. The maths,
    the parameters and the state-dict keys are the same in all three (only the speed differs by device), so a
    checkpoint trained with one loads into the others.
    """

    def __init__(self, input_channels: int, n_stages: int, features_per_stage: IntOrSeq, conv_op: Type[_ConvNd],
                 kernel_sizes: IntOrSeq, strides: IntOrSeq, n_conv_per_stage: IntOrSeq, conv_bias: bool = False,
                 norm_op: Union[None, Type[nn.Module]] = None, norm_op_kwargs: dict = None,
                 dropout_op: Union[None, Type[_DropoutNd]] = None, dropout_op_kwargs: dict = None,
                 nonlin: Union[None, Type[nn.Module]] = None, nonlin_kwargs: dict = None, nonlin_first: bool = False,
                 use_mem: bool = True, use_cif: bool = True, stream_width: float = 0.5, mem_reduction: int = 4,
                 stream_formulation: str = "grouped"):
        super().__init__()
        if input_channels < 1:
            raise ValueError(f"input_channels (number of modalities) must be >= 1, got {input_channels}")
        if stream_width <= 0:
            raise ValueError(f"stream_width must be > 0, got {stream_width}")
        self.stream_formulation = check_stream_formulation(stream_formulation)
        features_per_stage = _per_stage(features_per_stage, n_stages, "features_per_stage")
        kernel_sizes = _per_stage(kernel_sizes, n_stages, "kernel_sizes")
        strides = _per_stage(strides, n_stages, "strides")
        n_conv_per_stage = _per_stage(n_conv_per_stage, n_stages, "n_conv_per_stage")

        self.num_modalities = m = input_channels
        self.stream_channels = [max(1, int(round(f * stream_width))) for f in features_per_stage]
        # every convolution of the streams; MEM's tiny 1x1 convolutions on pooled vectors stay grouped
        stream_conv_op = grouped_conv_op(conv_op, m, stream_formulation)

        stages, mems, cifs, fusions = [], [], [], []
        in_per_modality = 1
        for s in range(n_stages):
            c = self.stream_channels[s]
            stages.append(StackedConvBlocks(
                n_conv_per_stage[s], stream_conv_op, m * in_per_modality, m * c, kernel_sizes[s], strides[s],
                conv_bias, norm_op, norm_op_kwargs, dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs, nonlin_first))
            if use_mem:
                mems.append(ModalitySpecificEnhancement(conv_op, m, c, mem_reduction))
            if use_cif and m > 1:
                cifs.append(ComplementaryInformationFusion(m, c))
            fusions.append(conv_op(m * c, features_per_stage[s], 1, bias=conv_bias))
            in_per_modality = c
        self.stages = nn.ModuleList(stages)
        self.mem = nn.ModuleList(mems) if use_mem else None
        self.cif = nn.ModuleList(cifs) if cifs else None
        self.fusion = nn.ModuleList(fusions)

        # what UNetDecoder reads from its encoder (same meaning as in PlainConvEncoder)
        self.output_channels = features_per_stage
        self.strides = [maybe_convert_scalar_to_list(conv_op, i) for i in strides]
        self.conv_op = conv_op
        self.kernel_sizes = kernel_sizes
        self.conv_bias = conv_bias
        self.norm_op = norm_op
        self.norm_op_kwargs = norm_op_kwargs
        self.dropout_op = dropout_op
        self.dropout_op_kwargs = dropout_op_kwargs
        self.nonlin = nonlin
        self.nonlin_kwargs = nonlin_kwargs

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        skips = []
        for s, stage in enumerate(self.stages):
            x = stage(x)
            if self.mem is not None and self.cif is not None:
                x = self.cif[s](x, channel_scale=self.mem[s].attention(x))  # = cif(mem(x)), less memory
            elif self.mem is not None:
                x = self.mem[s](x)
            elif self.cif is not None:
                x = self.cif[s](x)
            skips.append(self.fusion[s](x))
        return skips

    def compute_conv_feature_map_size(self, input_size) -> np.int64:
        """Voxels of all feature maps (streams and fused skips), as nnU-Net's planner estimates VRAM with."""
        output = np.int64(0)
        for s, stage in enumerate(self.stages):
            output += stage.compute_conv_feature_map_size(input_size)
            input_size = [i // j for i, j in zip(input_size, self.strides[s])]
            output += np.prod([self.output_channels[s], *input_size], dtype=np.int64)  # fused skip
        return output


class MemCifUNet(AbstractDynamicNetworkArchitectures):
    """nnU-Net network for multi-modal input: ``decoder(encoder(x))`` with a MemCifEncoder.

    Takes exactly the keyword arguments of dynamic_network_architectures' PlainConvUNet plus ``use_mem``,
    ``use_cif``, ``stream_width`` and ``stream_formulation`` (see MemCifEncoder), so that nnU-Net plans or
    ``get_network_from_plans`` can name it.
    ``input_channels`` is the number of modalities M (M = 1 works: one stream, no exchange).
    """

    def __init__(self, input_channels: int, n_stages: int, features_per_stage: IntOrSeq, conv_op: Type[_ConvNd],
                 kernel_sizes: IntOrSeq, strides: IntOrSeq, n_conv_per_stage: IntOrSeq, num_classes: int,
                 n_conv_per_stage_decoder: IntOrSeq, conv_bias: bool = False,
                 norm_op: Union[None, Type[nn.Module]] = None, norm_op_kwargs: dict = None,
                 dropout_op: Union[None, Type[_DropoutNd]] = None, dropout_op_kwargs: dict = None,
                 nonlin: Union[None, Type[nn.Module]] = None, nonlin_kwargs: dict = None,
                 deep_supervision: bool = False, nonlin_first: bool = False,
                 use_mem: bool = True, use_cif: bool = True, stream_width: float = 0.5,
                 stream_formulation: str = "grouped"):
        super().__init__()
        self.key_to_encoder = "encoder.stages"
        self.key_to_stem = "encoder.stages.0"
        self.keys_to_in_proj = ("encoder.stages.0.convs.0.conv", "encoder.stages.0.convs.0.all_modules.0")
        n_conv_per_stage_decoder = _per_stage(n_conv_per_stage_decoder, n_stages - 1, "n_conv_per_stage_decoder")
        self.use_mem, self.use_cif, self.stream_width = use_mem, use_cif, stream_width
        self.stream_formulation = stream_formulation
        self.encoder = MemCifEncoder(input_channels, n_stages, features_per_stage, conv_op, kernel_sizes, strides,
                                     n_conv_per_stage, conv_bias, norm_op, norm_op_kwargs, dropout_op,
                                     dropout_op_kwargs, nonlin, nonlin_kwargs, nonlin_first,
                                     use_mem=use_mem, use_cif=use_cif, stream_width=stream_width,
                                     stream_formulation=stream_formulation)
        self.decoder = UNetDecoder(self.encoder, num_classes, n_conv_per_stage_decoder, deep_supervision,
                                   nonlin_first=nonlin_first)

    def forward(self, x: torch.Tensor):
        return self.decoder(self.encoder(x))

    def compute_conv_feature_map_size(self, input_size) -> np.int64:
        if len(input_size) != convert_conv_op_to_dim(self.encoder.conv_op):
            raise ValueError("give the spatial input size only, e.g. (x, y, z), without batch or channel axes")
        return self.encoder.compute_conv_feature_map_size(input_size) + \
            self.decoder.compute_conv_feature_map_size(input_size)

    @staticmethod
    def initialize(module: nn.Module) -> None:
        """nnU-Net's He init for convolutions; CIF holds raw parameters and initialises them itself."""
        InitWeights_He(1e-2)(module)
        if isinstance(module, ComplementaryInformationFusion):
            module.reset_parameters()
