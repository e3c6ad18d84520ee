"""Errors of the environment step. Messages are meant to be shown to the user as they are."""

from __future__ import annotations

from ..errors import ParallalxError


class EnvironmentStepError(ParallalxError):
    """Base class for everything this package raises on purpose (the caller's selection or
    requirement is wrong: 400, unless a subclass says otherwise)."""


class InterpreterError(EnvironmentStepError):
    """A Python interpreter is missing, cannot run, timed out, or did not answer as Python."""

    status = 422  # the request was understood; the interpreter it names cannot be used

    def __init__(self, python: str, reason: str) -> None:
        super().__init__(f"{python}: {reason}")
        self.python = python
        self.reason = reason


class RequirementError(EnvironmentStepError, ValueError):
    """A requirement string is not valid PEP 508, is refused, or conflicts with a pin."""


class UnknownKernelError(EnvironmentStepError, KeyError):
    """No kernelspec of that name on this device."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "unknown kernel"


class InstallError(EnvironmentStepError):
    """pip failed, or finished without producing the required versions.

    ``packages`` names what failed (empty when pip gave no package), ``pip_error`` is pip's last
    error line, ``output`` the tail of pip's output.
    """

    status = 422  # the request was understood; installing into that environment failed

    def __init__(
        self,
        message: str,
        *,
        packages: list[str] | None = None,
        pip_error: str | None = None,
        output: list[str] | None = None,
    ) -> None:
        super().__init__(message)
        self.packages = packages or []
        self.pip_error = pip_error
        self.output = output or []


class InstallTimeout(InstallError):
    """pip ran past the install timeout and was stopped."""


class InstallCancelled(InstallError):
    """The install was cancelled and pip was stopped."""
