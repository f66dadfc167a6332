"""Checkpoints that appear whole or not at all, for every trainer of this plugin."""
import torch

from nnunet_mem_cif.atomic import write_atomically
from nnunet_mem_cif.checkpoints import read_checkpoint


class AtomicCheckpointsMixin:
    """Put before an nnU-Net trainer class. nnU-Net's ``save_checkpoint`` writes straight onto checkpoint_latest:
    a training killed mid-write (a cluster's time limit, a session's end) leaves a truncated file that ``--c``
    cannot resume from. Here nnU-Net's checkpoint is written to a temporary sibling, a subclass's own entries
    (``checkpoint_entries``: the teacher of the semi-supervised trainers) are added to that file, and one rename
    puts it in place, so a reader sees the previous checkpoint or the new one."""

    def checkpoint_entries(self) -> dict:
        """Entries a subclass adds to nnU-Net's checkpoint (nnU-Net's ``save_checkpoint`` has no hook for them)."""
        return {}

    def save_checkpoint(self, filename: str) -> None:
        if self.local_rank != 0 or self.disable_checkpointing:  # nnU-Net writes nothing then
            return super().save_checkpoint(filename)

        def write(partial: str) -> None:
            super(AtomicCheckpointsMixin, self).save_checkpoint(partial)
            entries = self.checkpoint_entries()
            if entries:
                # read whole, not memory-mapped: the same file is written again
                checkpoint = read_checkpoint(partial, "cpu", mmap=False)
                checkpoint.update(entries)
                torch.save(checkpoint, partial)

        write_atomically(filename, write)
