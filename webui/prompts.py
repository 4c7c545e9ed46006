"""The prompt syntax most SD tools share (and every pasted infotext uses): attention weights and
BREAK. Parsing only, no torch; engine/prompt_encoding.py turns the result into embeddings.

    (word)         weight x 1.1          ((word))      x 1.21 (brackets nest and multiply)
    (word:1.3)     weight x 1.3          [word]        weight / 1.1
    \\( \\) \\[ \\]    literal brackets       \\\\            a literal backslash
    BREAK          (in capitals, as a word) starts a new 75-token chunk

An unclosed bracket weights the rest of the prompt; a stray closing one is plain text. The
`<lora:name:weight>` tags are handled before this (engine/lora.py).

Written here rather than taken from a library: the libraries that build weighted embeddings use
another syntax and another weighting, and the parser must stay linear on hostile text (a
quadratic one held the server on long prompts). Each group's multiplier is known only when it
closes, so fragments remember their innermost open group of each kind, and their weights are
the products along the group chains, computed once at the end: linear in the prompt's length
however deep the brackets go.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# A weight written as (word:1.3) may be from -10 to 10.
MAX_WEIGHT = 10.0
ROUND, SQUARE = 1.1, 1 / 1.1

# One token of the syntax per match: escapes, brackets, an explicit weight closing a group, a
# run of plain text, or a lone colon. Every alternative is bounded by what it can consume, so
# scanning is linear.
_TOKEN = re.compile(r"""
    \\[\\()\[\]]                          # an escaped bracket or backslash
  | \\                                    # a lone backslash: text
  | \(|\[                                 # a group opens
  | :\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*\)    # ':1.3)' closes a round group, weighted
  | \)|\]                                 # a group closes
  | (?:[^\\()\[\]:]|:(?!\s*[+-]?\.?\d))+  # plain text, with colons that start no weight
  | :                                     # a colon before a number: text, unless ':w)' above
""", re.X)
_BREAK = re.compile(r"\bBREAK\b")


class PromptSyntaxError(ValueError):
    """A prompt the syntax cannot use (an explicit weight out of range)."""


@dataclass(frozen=True)
class Fragment:
    """A run of prompt text with one weight; `brk` marks a BREAK (no text)."""

    text: str
    weight: float = 1.0
    brk: bool = False


BREAK = Fragment("", 1.0, brk=True)


def parse(prompt: str) -> list[Fragment]:
    """The prompt as fragments with weights and BREAK markers; neighbours of equal weight are
    merged, empty text dropped (an empty prompt is one empty fragment)."""
    texts: list[str] = []
    groups_of: list[tuple[int, int]] = []  # per fragment: innermost (round, square) group
    breaks: set[int] = set()  # fragment indices that are BREAKs
    # Groups: multiplier and parent (index into the same list; 0 is the root, multiplier 1).
    multiplier = [1.0]
    parent = [0]
    round_open: list[int] = []
    square_open: list[int] = []

    def add(text: str, brk: bool = False) -> None:
        if brk:
            breaks.add(len(texts))
        texts.append(text)
        groups_of.append((round_open[-1] if round_open else 0,
                          square_open[-1] if square_open else 0))

    def open_group(stack: list[int], factor: float) -> None:
        # The multiplier is the default for an unclosed group; a closing ':w)' replaces it.
        multiplier.append(factor)
        parent.append(stack[-1] if stack else 0)
        stack.append(len(multiplier) - 1)

    for match in _TOKEN.finditer(prompt or ""):
        token, weight = match.group(0), match.group(1)
        if token[0] == "\\":
            add(token[1:] if len(token) == 2 else token)
        elif token == "(":
            open_group(round_open, ROUND)
        elif token == "[":
            open_group(square_open, SQUARE)
        elif weight is not None and round_open:
            value = float(weight)
            if not -MAX_WEIGHT <= value <= MAX_WEIGHT:
                raise PromptSyntaxError(
                    f"the attention weight {weight} in {token.strip()!r} must be from "
                    f"{-MAX_WEIGHT:g} to {MAX_WEIGHT:g}")
            multiplier[round_open.pop()] = value
        elif token == ")" and round_open:
            round_open.pop()
        elif token == "]" and square_open:
            square_open.pop()
        else:
            pieces = _BREAK.split(token)
            for index, piece in enumerate(pieces):
                if index:
                    add("", brk=True)
                    piece = piece.lstrip()
                if index < len(pieces) - 1:
                    piece = piece.rstrip()
                add(piece)
    # Each group's whole weight: its own times its parent's (parents come first).
    total = multiplier[:]
    for group in range(1, len(total)):
        total[group] = multiplier[group] * total[parent[group]]
    fragments: list[Fragment] = []
    run: list[str] = []  # texts of the current run of one weight, joined once it ends
    run_weight = None

    def flush() -> None:
        if run:
            fragments.append(Fragment("".join(run), run_weight))
            run.clear()

    for index, (text, (round_group, square_group)) in enumerate(zip(texts, groups_of)):
        if index in breaks:
            flush()
            fragments.append(BREAK)
            continue
        if not text:
            continue
        weight = total[round_group] * total[square_group]
        if weight != run_weight:
            flush()
            run_weight = weight
        run.append(text)
    flush()
    return fragments or [Fragment("")]

