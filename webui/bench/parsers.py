"""The text parsers (infotext, prompt syntax, LoRA tags) timed on 1 MB of adversarial text each:
a parser that backtracks would stall the whole server, so each must stay linear on hostile input.
"""

from __future__ import annotations

import time


# Text parsers run on whatever a client sends; each must stay linear on hostile input. The
# texts are 1 MB (ten times what any field accepts), each built to defeat one kind of parser.
PARSER_TEXT_BYTES = 1_000_000
PARSER_BUDGET_S = 1.0


def adversarial_texts(size: int = PARSER_TEXT_BYTES) -> dict[str, str]:
    """Named hostile texts of about `size` characters."""
    return {
        "words without colons": ("lorem ipsum " * size)[:size],
        "commas then a colon": "," * size + ": x",
        "colons only": ":" * size,
        "unclosed quotes": ('k:"' * size)[:size],
        "key characters": "Steps: 1, Sampler: Euler, CFG scale: 7, " + "(" * size + ":",
        "lora tags": ("<lora:" * size)[:size],
        "brackets": ("((([[[" * size)[:size],
        "escapes": ("\\(" * size)[:size],
        "BREAK words": ("BREAK " * size)[:size],
    }


def parser_cases(budget: float = PARSER_BUDGET_S) -> list[dict]:
    """Seconds each text parser takes on each adversarial text, against the budget."""
    from .. import infotext, prompts
    from ..engine import parse_prompt_loras

    parsers = {
        "prompt syntax": prompts.parse,
        "<lora:...> tags": parse_prompt_loras,
        # The settings-line scanner sees the whole text; parse() refuses more than MAX_CHARS
        # at once, so it is timed on text cut to that length.
        "infotext settings scanner": infotext._pairs,
        "infotext.parse": lambda text: infotext.parse(text[:infotext.MAX_CHARS]),
    }
    cases = []
    for parser, parse in parsers.items():
        for name, text in adversarial_texts().items():
            t0 = time.perf_counter()
            try:
                parse(text)
            except ValueError:
                pass  # a refusal is an answer too; the time to reach it is what counts
            seconds = time.perf_counter() - t0
            cases.append({"parser": parser, "text": name, "chars": len(text),
                          "seconds": round(seconds, 4), "budget_s": budget,
                          "within_budget": seconds <= budget})
    return cases
