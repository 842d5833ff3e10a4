"""Prose fitted to the terminal: broken at word boundaries, never inside a pasteable command.

A terminal breaks an over-long line wherever the width ends, so `setup-mesh apply` could come out as
`setup-m` / `esh apply`. Warnings, errors and hints are wrapped here instead; a command in backticks
is one unbreakable piece (on a line of its own when it is wider than the terminal, so that it can still
be copied whole).
"""
from __future__ import annotations

import re

# A backtick-quoted command (kept whole, spaces and all) or a run of non-blank characters.
_PIECE = re.compile(r"`[^`]*`\S*|\S+")
_PROGRAMS = ("setup-mesh", "setup_mesh.py")
_SUBCOMMANDS = {"prep-mesh", "apply", "status", "describe", "verify", "teardown", "rotate-certs"}


def _pieces(paragraph: str) -> list[str]:
    """The paragraph's unbreakable pieces. A setup-mesh command line written without backticks (as hints
    name it) is one piece too: the program, its command, and its options with their values."""
    pieces: list[str] = []
    in_command = expects_value = False
    for piece in _PIECE.findall(paragraph):
        if in_command and (piece in _SUBCOMMANDS or piece.startswith("-") or expects_value):
            pieces[-1] += " " + piece
            expects_value = piece.startswith("--") and "=" not in piece
            continue
        in_command = piece.rsplit("/", 1)[-1] in _PROGRAMS
        expects_value = False
        pieces.append(piece)
    return pieces


def wrap_prose(text: str, width: int, first_prefix: str = "", indent: str = "  ") -> list[str]:
    """``text`` as lines no wider than ``width`` where that can be done without splitting a piece:
    the first line starts with ``first_prefix``, the others with ``indent``. A newline in ``text``
    starts a new line (with ``indent``)."""
    lines: list[str] = []
    for number, paragraph in enumerate(text.split("\n")):
        own = paragraph[:len(paragraph) - len(paragraph.lstrip(" "))]  # a listed item keeps its indent
        line = first_prefix if number == 0 else (own or indent)
        carry = indent if number == 0 else (own or indent) + "  "
        start = len(line)
        for piece in _pieces(paragraph):
            if len(line) > start and len(line) + 1 + len(piece) > width:
                lines.append(line)
                line = carry
                start = len(line)
            line += (" " if len(line) > start else "") + piece
        lines.append(line)
    return lines


def fit(console, text: str, prefix: str = "", indent: str = "  ") -> str:
    """``prefix`` + ``text`` wrapped to a terminal console's width; one line elsewhere (logs, pipes,
    grep), where no terminal breaks it."""
    if not console.is_terminal:
        return prefix + text
    return "\n".join(wrap_prose(text, console.width, first_prefix=prefix, indent=indent))
