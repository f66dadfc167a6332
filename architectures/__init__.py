"""MEM / CIF building blocks and the MemCifUNet network (installed as ``nnunet_mem_cif.architectures``)."""
from nnunet_mem_cif.architectures.grouped_conv import grouped_conv_op
from nnunet_mem_cif.architectures.mem import ModalitySpecificEnhancement
from nnunet_mem_cif.architectures.cif import ComplementaryInformationFusion
from nnunet_mem_cif.architectures.memcif_unet import MemCifEncoder, MemCifUNet

__all__ = ["grouped_conv_op", "ModalitySpecificEnhancement", "ComplementaryInformationFusion", "MemCifEncoder",
           "MemCifUNet"]
