"""Tolerant JSON-with-comments reader, for VS Code's settings.json.

VS Code accepts ``//`` and ``/* */`` comments and trailing commas; this strips them (outside of
strings, escapes respected) and hands the rest to :func:`json.loads`.
"""

from __future__ import annotations

import json
from typing import Any


def strip_comments(text: str) -> str:
    out: list[str] = []
    i, n = 0, len(text)
    in_string = False
    while i < n:
        ch = text[i]
        if in_string:
            out.append(ch)
            if ch == "\\" and i + 1 < n:
                out.append(text[i + 1])
                i += 2
                continue
            if ch == '"':
                in_string = False
            i += 1
        elif ch == '"':
            in_string = True
            out.append(ch)
            i += 1
        elif text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end < 0 else end  # keep the newline (line numbers in errors stay right)
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            comment = text[i : (n if end < 0 else end + 2)]
            out.append("\n" * comment.count("\n") or " ")
            i = n if end < 0 else end + 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def strip_trailing_commas(text: str) -> str:
    """Drop a ``,`` that is followed (after whitespace) by ``}`` or ``]``; expects no comments."""
    out: list[str] = []
    i, n = 0, len(text)
    in_string = False
    while i < n:
        ch = text[i]
        if in_string:
            out.append(ch)
            if ch == "\\" and i + 1 < n:
                out.append(text[i + 1])
                i += 2
                continue
            if ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
            out.append(ch)
        elif ch == ",":
            j = i + 1
            while j < n and text[j] in " \t\r\n":
                j += 1
            if j >= n or text[j] not in "}]":
                out.append(ch)
        else:
            out.append(ch)
        i += 1
    return "".join(out)


def loads(text: str) -> Any:
    """Parse JSONC; raises ``ValueError`` (``json.JSONDecodeError``) when it is still not JSON."""
    if text.startswith("\ufeff"):
        text = text[1:]
    cleaned = strip_trailing_commas(strip_comments(text))
    if not cleaned.strip():
        return {}
    return json.loads(cleaned)
