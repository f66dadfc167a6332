"""User errors of this plugin, and how they are shown when they end one of nnU-Net's commands.

A missing unlabeled folder or a corrupt checkpoint is the user's to fix, not a bug: ``nnUNetv2_train`` should end
with one line that says what to do, not with a traceback through nnU-Net's internals. nnU-Net's console scripts
offer no hook, so importing the trainers installs a ``sys.excepthook`` that prints *only* these errors as one line
(exit code 1 as before) and hands every other exception to the previous hook unchanged.
"""
import sys


class PluginUserError(Exception):
    """Base of the errors whose message tells the user what to fix."""


def user_error_line(exc: BaseException) -> str:
    """The one line a user error is shown as (a message that quotes a multi-line tool output stays one line)."""
    return "nnunet-mem-cif: error: " + " ".join(line.strip() for line in str(exc).splitlines() if line.strip())


def _print_user_errors(exc_type, exc, traceback, previous=sys.excepthook):
    if issubclass(exc_type, PluginUserError):
        print(user_error_line(exc), file=sys.stderr)
    else:
        previous(exc_type, exc, traceback)


def install_user_error_hook() -> None:
    if sys.excepthook is not _print_user_errors:
        sys.excepthook = _print_user_errors
