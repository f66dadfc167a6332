"""nnunet-mem-cif: semi-supervised multi-modal segmentation (MEM + CIF + cross-modal consistency) for nnU-Net v2."""
import os as _os

__version__ = "0.1.0"

# The repository keeps architectures/ and trainers/ at its top level and setup.py installs them inside this package.
# Imported from a source checkout (a Python shell in the clone's root), this package finds them there, so that
# nnunet_mem_cif.architectures and nnunet_mem_cif.trainers import as they do after installation.
_checkout = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if not _os.path.isdir(_os.path.join(__path__[0], "trainers")) and \
        _os.path.isfile(_os.path.join(_checkout, "setup.py")) and \
        _os.path.isdir(_os.path.join(_checkout, "trainers")):
    __path__.append(_checkout)
