"""Exception and warning classes raised by layerclip.

Every refusal the package makes is a subclass of :class:`LayerclipError`, so that
callers (and the command line, which turns them into exit code 2) can tell a
refused input from a bug. Messages are one line and name the file, extension or
option concerned and what was expected.
"""

__all__ = [
    "LayerclipError",
    "InputFileError",
    "CubeFormatError",
    "WavelengthError",
    "LayerMapError",
    "EmptyTargetError",
    "OptionError",
    "OutputError",
    "RestoreError",
    "LayerclipWarning",
    "BadUncertaintyWarning",
]


class LayerclipError(Exception):
    """Base class of every error layerclip raises on purpose.

    The message is kept on one line (line breaks from a dependency's own message
    are folded into spaces).
    """

    def __init__(self, *args):
        if len(args) == 1 and isinstance(args[0], str):
            args = (" ".join(args[0].split()),)
        super().__init__(*args)


class InputFileError(LayerclipError):
    """An input file is missing, unreadable, or not a FITS file."""


class CubeFormatError(LayerclipError):
    """A FITS file was read but does not hold a usable cube (extensions, shapes, types)."""


class WavelengthError(LayerclipError):
    """The spectral axis is missing, not understood, or does not cover what was asked."""


class LayerMapError(LayerclipError):
    """A layer map has the wrong shape or values."""


class EmptyTargetError(LayerclipError):
    """No spaxel passes the target selection (for example the S/N threshold)."""


class OptionError(LayerclipError):
    """An option has a value that cannot be used."""


class OutputError(LayerclipError):
    """An output cannot be written where or how it was asked."""


class RestoreError(LayerclipError):
    """A cleaned file cannot be restored (no undo table, or one that does not fit)."""


class LayerclipWarning(UserWarning):
    """Something was adjusted or excluded automatically; the message says what."""


class BadUncertaintyWarning(LayerclipWarning):
    """Voxels with finite flux but zero, negative or NaN uncertainty were excluded."""
