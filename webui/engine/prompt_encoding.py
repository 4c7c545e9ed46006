"""Prompt embeddings with attention weights, BREAK and prompts longer than 77 tokens
(prompts.py has the syntax), for SD 1.x, 2.x and SDXL (both text encoders).

The semantics are those of the most used SD tools, so pasted prompts and imported infotext
make the pictures they made there:

- the prompt is cut into chunks of 75 tokens, each encoded on its own between the start and
  end tokens, and the chunks' embeddings are joined (a prompt of any length; BREAK starts a
  new chunk; a chunk that fills up goes back to its last comma if that is at most 20 tokens
  back, so a phrase is not split);
- each token's embedding is multiplied by its weight, then the chunk is rescaled to its
  original mean, so weights shift emphasis without changing the overall magnitude (unless
  that mean is about zero, where the rescale would divide by nearly nothing);
- a weight of 1 gives exactly the unweighted result: an unweighted prompt of up to 75 tokens
  gives the very embeddings the pipeline itself would make from the text.

Written here rather than with a library: the library that builds weighted, chunked embeddings
for diffusers blends towards the empty prompt instead of rescaling, and knows no BREAK, so it
would not reproduce pictures made with this syntax elsewhere.

The prompt and the negative prompt get the same number of chunks (the shorter is padded with
empty ones), as classifier-free guidance runs them as one batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import prompts
from ..prompts import Fragment

# How far back a full chunk looks for a comma to break at.
COMMA_BACKTRACK = 20


@dataclass
class _Chunk:
    tokens: list[int]
    weights: list[float]


def _tokenize(tokenizer, fragments: list[Fragment]) -> list[_Chunk]:
    """Chunks of at most model_max_length - 2 tokens, with a weight per token."""
    size = tokenizer.model_max_length - 2
    comma = tokenizer(",", add_special_tokens=False).input_ids
    comma = comma[0] if len(comma) == 1 else None
    chunks: list[_Chunk] = []
    chunk = _Chunk([], [])
    last_comma = -1

    def close() -> None:
        nonlocal chunk, last_comma
        chunks.append(chunk)
        chunk, last_comma = _Chunk([], []), -1

    for fragment in fragments:
        if fragment.brk:
            close()
            continue
        ids = tokenizer(fragment.text, add_special_tokens=False, truncation=False,
                        verbose=False).input_ids if fragment.text else []
        for token in ids:
            if token == comma:
                last_comma = len(chunk.tokens)
            elif len(chunk.tokens) == size and last_comma != -1 \
                    and len(chunk.tokens) - last_comma <= COMMA_BACKTRACK:
                # Move the words after the last comma to the next chunk.
                cut = last_comma + 1
                moved = _Chunk(chunk.tokens[cut:], chunk.weights[cut:])
                chunk = _Chunk(chunk.tokens[:cut], chunk.weights[:cut])
                close()
                chunk = moved
            if len(chunk.tokens) == size:
                close()
            chunk.tokens.append(token)
            chunk.weights.append(fragment.weight)
    if chunk.tokens or not chunks:
        close()
    return chunks


def _ids(tokenizer, chunk: _Chunk) -> tuple[list[int], list[float]]:
    """The chunk laid out as the pipeline lays out a prompt: start, tokens, end, padding."""
    length = tokenizer.model_max_length
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = [tokenizer.bos_token_id, *chunk.tokens, tokenizer.eos_token_id]
    weights = [1.0, *chunk.weights, 1.0]
    ids += [pad] * (length - len(ids))
    weights += [1.0] * (length - len(weights))
    return ids, weights


def _encode_chunk(tokenizer, encoder, chunk: _Chunk, device, penultimate: bool):
    """(hidden states [1, 77, dim] with the weights applied, pooled output or None)."""
    ids, weights = _ids(tokenizer, chunk)
    ids_t = torch.tensor([ids], device=device)
    mask = None
    if getattr(encoder.config, "use_attention_mask", False):
        # As the tokenizer's own mask: start, tokens and end count, the padding does not.
        used = len(chunk.tokens) + 2
        mask = torch.tensor([[1] * used + [0] * (len(ids) - used)], device=device)
    out = encoder(ids_t, attention_mask=mask, output_hidden_states=penultimate)
    # SDXL reads the penultimate layer; SD 1.x / 2.x the last one (with its final norm).
    hidden = out.hidden_states[-2] if penultimate else out[0]
    pooled = out[0] if out[0].ndim == 2 else None
    if any(w != 1.0 for w in weights):
        scale = torch.tensor(weights, device=hidden.device, dtype=hidden.dtype)[None, :, None]
        mean = hidden.float().mean()
        hidden = hidden * scale
        new_mean = hidden.float().mean()
        # A mean near zero (a final layer norm can leave one) would blow the rescale up to
        # infinity; the weighted embeddings are then used as they are.
        if new_mean.abs() > 1e-4 * hidden.float().abs().mean():
            hidden = hidden * (mean / new_mean).to(hidden.dtype)
    return hidden, pooled


@dataclass
class Encoded:
    """One prompt's embeddings: per text encoder, one [1, 77, dim] tensor per chunk, and the
    pooled output of the last encoder's first chunk (SDXL)."""

    chunks: list[list[torch.Tensor]]
    pooled: torch.Tensor | None


def _encoders(pipe) -> list[tuple]:
    pairs = [(pipe.tokenizer, pipe.text_encoder)]
    if getattr(pipe, "text_encoder_2", None) is not None:
        pairs.append((pipe.tokenizer_2, pipe.text_encoder_2))
    return [(t, e) for t, e in pairs if t is not None and e is not None]


def _encode(pipe, text: str, device) -> Encoded:
    fragments = prompts.parse(text)
    xl = getattr(pipe, "text_encoder_2", None) is not None
    per_encoder, pooled = [], None
    for tokenizer, encoder in _encoders(pipe):
        chunks = _tokenize(tokenizer, fragments)
        states = []
        for index, chunk in enumerate(chunks):
            hidden, chunk_pooled = _encode_chunk(tokenizer, encoder, chunk, device, xl)
            states.append(hidden.to(dtype=encoder.dtype))
            if index == 0 and chunk_pooled is not None:
                pooled = chunk_pooled.to(dtype=encoder.dtype)
        per_encoder.append(states)
    return Encoded(per_encoder, pooled)


def _pad(encoded: Encoded, chunks: int, empty: Encoded | None) -> list[torch.Tensor]:
    """The prompt's embeddings with empty chunks added up to `chunks`, one tensor per encoder
    joined along the features (SDXL) and the chunks along the tokens."""
    joined = []
    for index, states in enumerate(encoded.chunks):
        if len(states) < chunks:
            states = states + [empty.chunks[index][0]] * (chunks - len(states))
        joined.append(torch.cat(states, dim=1))
    return joined


def encode_prompts(pipe, prompt: str, negative: str, batch: int) -> dict:
    """The embedding keyword arguments for a pipeline call (prompt_embeds, and the negative and
    pooled ones where they apply), for `batch` images of the same prompts.

    An empty negative prompt is left to the pipeline (SDXL uses zeros there when its config
    says so), exactly as when it is given as text.
    """
    device = pipe._execution_device
    with torch.no_grad():
        positive = _encode(pipe, prompt, device)
        negative_encoded = _encode(pipe, negative, device) if negative else None
        count = max(len(positive.chunks[0]),
                    len(negative_encoded.chunks[0]) if negative_encoded else 1)
        # Empty chunks pad the shorter prompt (none needed when both are one chunk).
        empty = _encode(pipe, "", device) if count > 1 else None
        kwargs: dict = {}
        prompt_embeds = torch.cat(_pad(positive, count, empty), dim=-1)
        kwargs["prompt_embeds"] = prompt_embeds.repeat(batch, 1, 1)
        if positive.pooled is not None:
            kwargs["pooled_prompt_embeds"] = positive.pooled.repeat(batch, 1)
        if negative_encoded is not None:
            negative_embeds = torch.cat(_pad(negative_encoded, count, empty), dim=-1)
            kwargs["negative_prompt_embeds"] = negative_embeds.repeat(batch, 1, 1)
            if negative_encoded.pooled is not None:
                kwargs["negative_pooled_prompt_embeds"] = negative_encoded.pooled.repeat(batch, 1)
        elif count > 1:
            # The pipeline would make a 77-token empty negative; the prompt is longer.
            kwargs.update(_empty_negative(pipe, empty, count, batch, prompt_embeds,
                                          positive.pooled))
    return kwargs


def _empty_negative(pipe, empty: Encoded, count: int, batch: int, prompt_embeds, pooled) -> dict:
    """The negative embeddings for an empty negative prompt, as long as a multi-chunk prompt."""
    if getattr(pipe, "text_encoder_2", None) is not None and \
            getattr(pipe.config, "force_zeros_for_empty_prompt", False):
        out = {"negative_prompt_embeds": torch.zeros_like(prompt_embeds).repeat(batch, 1, 1)}
        if pooled is not None:
            out["negative_pooled_prompt_embeds"] = torch.zeros_like(pooled).repeat(batch, 1)
        return out
    out = {"negative_prompt_embeds": torch.cat(_pad(empty, count, empty), dim=-1)
           .repeat(batch, 1, 1)}
    if empty.pooled is not None:
        out["negative_pooled_prompt_embeds"] = empty.pooled.repeat(batch, 1)
    return out
