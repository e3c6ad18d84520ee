"""Ask a Python interpreter about itself by running it: never guess from the server's own env.

The probe scripts stay Python-2 compatible (no f-strings) so that an old interpreter still
answers with its version and can be refused with a clear reason instead of a syntax error.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ._process import ProcessTimeout, run_process
from .errors import InterpreterError

#: Printed before the JSON answer so that noise from sitecustomize/.pth files is ignored.
MARKER = "@@parallalx-probe@@"

#: Run before every probe script: drops the script's own directory ('' for ``-c``) so nothing is
#: imported from the cwd, and defines ``_answer(obj)``, which prints the JSON reply.
_PRELUDE = (
    "import sys, json\n"
    "if sys.path and sys.path[0] in ('', '.'):\n"
    "    del sys.path[0]\n"
    "def _answer(obj):\n"
    "    sys.stdout.write(" + repr(MARKER) + " + json.dumps(obj) + '\\n')\n"
    "    sys.stdout.flush()\n"
)

VERSION_SCRIPT = """\
import platform
_answer({
    'version': platform.python_version(),
    'implementation': platform.python_implementation(),
    'executable': sys.executable,
    'prefix': sys.prefix,
    'base_prefix': getattr(sys, 'base_prefix', sys.prefix),
})
"""


def _tail(text: str, limit: int = 300) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:limit] if lines else ""


async def run_python_json(
    python: str,
    script: str,
    *,
    args: list[str] | None = None,
    timeout: float = 15.0,
    env: dict[str, str] | None = None,
) -> Any:
    """Run ``python -c script *args`` and return the JSON it printed after :data:`MARKER`.

    Raises :class:`InterpreterError` with a short reason: missing, not executable, timed out,
    exited with an error (its last stderr line), or printed no answer (not a Python).
    """
    if not os.path.isfile(python):
        raise InterpreterError(python, "interpreter not found")
    if not os.access(python, os.X_OK):
        raise InterpreterError(python, "interpreter is not executable")
    try:
        result = await run_process([python, "-c", _PRELUDE + script, *(args or [])],
                                   timeout=timeout, env=env)
    except ProcessTimeout:
        raise InterpreterError(python, f"interpreter did not answer within {timeout:g} s") from None
    except OSError as exc:
        raise InterpreterError(python, f"interpreter cannot run: {exc.strerror or exc}") from None
    for line in reversed(result.stdout.splitlines()):
        if line.startswith(MARKER):
            try:
                return json.loads(line[len(MARKER):])
            except ValueError:
                break
    detail = _tail(result.stderr) or _tail(result.stdout) or f"exit status {result.returncode}"
    if result.returncode != 0:
        raise InterpreterError(python, f"interpreter failed (exit {result.returncode}): {detail}")
    raise InterpreterError(python, f"did not answer as a Python interpreter: {detail}")


async def python_version(python: str, *, timeout: float = 15.0) -> dict[str, str]:
    """``{"version", "implementation", "executable", "prefix", "base_prefix"}`` of ``python``."""
    info = await run_python_json(python, VERSION_SCRIPT, timeout=timeout)
    if not isinstance(info, dict) or not isinstance(info.get("version"), str):
        raise InterpreterError(python, "did not report its version")
    return info
