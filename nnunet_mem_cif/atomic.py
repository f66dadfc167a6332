"""Files and folders appear whole or not at all: every file this plugin writes goes through ``write_atomically``,
every output folder the command line writes through ``atomic_folder``."""
import os
import shutil
import sys
from contextlib import contextmanager
from typing import Callable, Iterator, TextIO

from nnunet_mem_cif.errors import PluginUserError


class OutputFolderError(PluginUserError, ValueError):
    """An output folder is in the way: a file, someone else's folder, or an earlier output without ``--overwrite``."""


def partial_path(path: str) -> str:
    """The temporary sibling ``path`` is written as: same folder, so the final rename is atomic; same extension,
    which matplotlib, SimpleITK and torch pick the format by."""
    directory, name = os.path.split(path)
    return os.path.join(directory, ".partial-" + name)


def write_atomically(path: str, write: Callable[[str], None]) -> str:
    """Call ``write(temporary_path)``, then rename the result onto ``path``.

    Readers (a resumed table run, nnU-Net loading a checkpoint) see the old file or the new one, never half of one;
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
    """``write_atomically`` for text: ``write`` gets an open handle (newline='' so the csv module controls line
    ends)."""
    def write_text(partial: str) -> None:
        with open(partial, "w", newline="") as handle:
            write(handle)
    return write_atomically(path, write_text)


def replaced_path(path: str) -> str:
    """Where an existing folder is moved while ``atomic_folder`` swaps the new one in (a sibling, hidden like the
    temporary, so that no tool that scans the parent folder mistakes it for data)."""
    directory, name = os.path.split(path)
    return os.path.join(directory, ".replaced-" + name)


def is_within(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it, after resolving symbolic links and ``..`` (both may not
    exist yet)."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([path, folder]) == folder


def check_output_folder(path: str, overwrite: bool, is_ours: Callable[[str], bool]) -> None:
    """Refuse, before any work, an output folder this command may not (or was not told to) replace.

    A missing or empty folder is fine. A non-empty one is replaced only with ``overwrite`` and only when
    ``is_ours(path)`` says it looks like this command's own output: ``--overwrite`` with a mistyped path must not
    delete a home folder or a dataset.
    """
    if os.path.islink(path) or (os.path.lexists(path) and not os.path.isdir(path)):
        raise OutputFolderError(f"{path} exists and is not a folder. Choose another output folder.")
    if not os.path.isdir(path) or not os.listdir(path):
        return
    if not is_ours(path):
        raise OutputFolderError(f"{path} holds files this command did not write, so it neither writes into nor "
                                f"replaces it (not even with --overwrite). Choose a new or empty folder.")
    if not overwrite:
        raise OutputFolderError(f"{path} already exists and is not empty. Choose a new or empty folder, or pass "
                                f"--overwrite to replace it whole.")


@contextmanager
def atomic_folder(path: str, overwrite: bool = False) -> Iterator[str]:
    """Yield a temporary sibling of ``path`` to write a whole folder into; rename it onto ``path`` on success.

    A folder appears whole or not at all: an exception, Ctrl-C (or SIGTERM, which the command line turns into
    Ctrl-C) removes the temporary and leaves ``path`` as it was. A run killed outright (SIGKILL, power loss) cannot
    clean up; the next run for the same ``path`` removes that leftover and says so on stderr. The temporary's name
    starts with a dot, so a killed conversion never leaves a folder that nnU-Net (which finds datasets by the
    ``DatasetNNN_`` prefix) would take for a dataset.

    ``overwrite``: an existing ``path`` is replaced whole (never mixed with its old files); without it, ``path``
    may only be missing or an empty folder. Callers check, before any work, that ``path`` is theirs to replace; this
    helper only makes the swap safe. One run per ``path`` at a time.
    """
    path = os.path.abspath(path)  # "out/" must not put the temporary inside "out"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    partial, replaced = partial_path(path), replaced_path(path)
    for leftover in (partial, replaced):
        if os.path.lexists(leftover):
            print(f"nnunet-mem-cif: removing {leftover}, left over from an interrupted run", file=sys.stderr)
            _remove(leftover)
    os.makedirs(partial)
    try:
        yield partial
        if os.path.lexists(path) and overwrite:
            os.replace(path, replaced)
        os.rename(partial, path)  # onto a missing path or an empty folder; refuses a non-empty one
    except BaseException:
        _remove(partial)
        if os.path.lexists(replaced) and not os.path.lexists(path):
            os.replace(replaced, path)  # the swap itself failed: put the old folder back
        raise
    _remove(replaced)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)
