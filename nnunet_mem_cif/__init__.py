"""nnunet-mem-cif: semi-supervised multi-modal segmentation (MEM + CIF + cross-modal consistency) for nnU-Net v2."""
__version__ = "0.1.0"
