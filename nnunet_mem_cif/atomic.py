"""Files appear whole or not at all: every file this plugin writes goes through ``write_atomically``."""
import os
from typing import Callable, TextIO


def partial_path(path: str) -> str:
    """The temporary sibling ``path`` is written as: same folder, so the final rename is atomic; same extension,
    which matplotlib, SimpleITK and torch pick the format by."""
    directory, name = os.path.split(path)
    return os.path.join(directory, ".partial-" + name)


def write_atomically(path: str, write: Callable[[str], None]) -> str:
    """Call ``write(temporary_path)``, then rename the result onto ``path``.

    Readers (a resumed benchmark, nnU-Net loading a checkpoint) see the old file or the new one, never half of one;
    a write that raises, or Ctrl-C, removes its temporary file and leaves ``path`` as it was.
    """
    partial = partial_path(path)
    try:
        write(partial)
        os.replace(partial, path)
    except BaseException:
        if os.path.exists(partial):
            os.remove(partial)
        raise
    return path


def write_text_atomically(path: str, write: Callable[[TextIO], None]) -> str:
    """``write_atomically`` for text: ``write`` gets an open handle (newline='' so the csv module controls line ends)."""
    def write_text(partial: str) -> None:
        with open(partial, "w", newline="") as handle:
            write(handle)
    return write_atomically(path, write_text)
