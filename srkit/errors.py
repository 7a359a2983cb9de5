"""One error hierarchy. Everything a user can cause derives from SrkitError and becomes one
`srkit: error: ...` line with exit status 2 on the command line."""

from __future__ import annotations


class SrkitError(Exception):
    """A problem the user can fix: bad input, missing backend, failed gate."""


class InputError(SrkitError):
    """An argument, file or image that srkit cannot use."""


class BackendUnavailableError(SrkitError):
    """A backend, device or execution provider that is not installed or not present."""


class UnsupportedModelError(SrkitError):
    """A checkpoint or ONNX model whose architecture srkit does not know."""


class ExportError(SrkitError):
    """Tracing, converting or checking an ONNX graph failed."""


class ParityError(ExportError):
    """The exported model disagrees with PyTorch beyond the gate."""
