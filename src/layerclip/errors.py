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
    "LayerclipWarning",
]


class LayerclipError(Exception):
    """Base class of every error layerclip raises on purpose."""


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


class LayerclipWarning(UserWarning):
    """Something was adjusted or excluded automatically; the message says what."""
