"""Rows that begin alike, packed into one sequence: their shared beginning once, then each row's own tokens.

The two orders of a balanced A/B question share everything up to the choices (45% of a CAA refusal question's
tokens, 88% of a sycophancy one's). Packed, the shared stem is computed once and each row's remainder (its
*branch*) attends to the stem and to itself only, at the positions it would have alone: a custom 4-D attention
mask and explicit position ids. Only the next-token logits at each branch's end are read, which is what a
last-position metric needs. Every steering operator acts per token, so a steered packed row gives each row's
steered logits (positions other than ``"all"`` are not packed: they are counted per row).

The caller checks that the model honours the mask (:class:`steerlab._replay.UnsteeredPass` compares a packed
chunk's unsteered logits with the rows run alone, and unpacks where they differ).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["PackedChunk", "pack_rows", "packed_tokens"]


@dataclass
class PackedChunk:
    """Packed sequences that run together: ``kwargs`` for the model call (left-padded ``input_ids``, a
    ``(sequences, 1, tokens, tokens)`` additive ``attention_mask``, ``position_ids``), and for every original row
    it holds, the (sequence, column) of its last token (``ends``) and its index in the original batch (``rows``)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    ends: tuple[torch.Tensor, torch.Tensor]
    rows: list[int]


@dataclass
class _Sequence:
    tokens: list[int]
    positions: list[int]
    segments: list[int]  # 0: the shared stem; j >= 1: the j-th row's own tokens
    ends: list[int]  # index of each row's last token
    rows: list[int]


def _common_prefix(rows: list[list[int]]) -> int:
    length = min(len(r) for r in rows)
    for i in range(length):
        if any(r[i] != rows[0][i] for r in rows[1:]):
            return i
    return length


def _sequences(tokens: Sequence[list[int]], groups: Sequence[int]) -> list[_Sequence]:
    members: dict[int, list[int]] = {}
    for row, group in enumerate(groups):
        members.setdefault(group, []).append(row)
    out = []
    for rows in members.values():
        texts = [tokens[r] for r in rows]
        # Every row keeps at least its last token as its own: that is where its logits are read.
        stem = min(_common_prefix(texts), min(len(t) for t in texts) - 1) if len(rows) > 1 else 0
        seq = _Sequence(list(texts[0][:stem]), list(range(stem)), [0] * stem, [], [])
        for j, (row, text) in enumerate(zip(rows, texts, strict=True), start=1):
            own = text[stem:]
            seq.tokens += own
            seq.positions += range(stem, stem + len(own))
            seq.segments += [j] * len(own)
            seq.ends.append(len(seq.tokens) - 1)
            seq.rows.append(row)
        out.append(seq)
    return out


def packed_tokens(tokens: Sequence[list[int]], groups: Sequence[int]) -> int:
    """How many tokens the packed sequences hold (the rows alone hold ``sum(map(len, tokens))``)."""
    return sum(len(s.tokens) for s in _sequences(tokens, groups))


def pack_rows(
    tokens: Sequence[list[int]], groups: Sequence[int], *, rows_per_chunk: int, pad_id: int, dtype: torch.dtype
) -> list[PackedChunk]:
    """Pack each group's rows (the same ``groups`` value) into one sequence and the sequences into chunks of
    about ``rows_per_chunk`` original rows, longest first (little padding); the mask is additive, in ``dtype``.

    Example:
        >>> chunks = pack_rows([[1, 2, 3], [1, 2, 4]], [0, 0], rows_per_chunk=16, pad_id=0, dtype=torch.float32)
        >>> chunks[0].input_ids.tolist(), chunks[0].ends
        ([[1, 2, 3, 4]], (tensor([0, 0]), tensor([2, 3])))
    """
    sequences = sorted(_sequences(tokens, groups), key=lambda s: -len(s.tokens))
    chunks: list[list[_Sequence]] = []
    for seq in sequences:
        if not chunks or sum(len(s.rows) for s in chunks[-1]) + len(seq.rows) > max(rows_per_chunk, len(seq.rows)):
            chunks.append([])
        chunks[-1].append(seq)
    blocked = torch.finfo(dtype).min
    out = []
    for members in chunks:
        width = max(len(s.tokens) for s in members)
        ids = torch.full((len(members), width), pad_id, dtype=torch.long)
        positions = torch.zeros((len(members), width), dtype=torch.long)
        # A padding column attends to itself only: a query with no key at all gives NaN in some kernels.
        allowed = torch.eye(width, dtype=torch.bool).expand(len(members), width, width).clone()
        end_seq, end_col, rows = [], [], []
        for i, seq in enumerate(members):
            offset = width - len(seq.tokens)
            ids[i, offset:] = torch.tensor(seq.tokens)
            positions[i, offset:] = torch.tensor(seq.positions)
            segments = torch.tensor(seq.segments)
            same = (segments[None, :] == 0) | (segments[None, :] == segments[:, None])
            causal = torch.ones(len(seq.tokens), len(seq.tokens), dtype=torch.bool).tril()
            allowed[i, offset:, offset:] = same & causal
            end_seq += [i] * len(seq.ends)
            end_col += [offset + e for e in seq.ends]
            rows += seq.rows
        mask = torch.zeros((len(members), 1, width, width), dtype=dtype).masked_fill(~allowed[:, None], blocked)
        out.append(PackedChunk(ids, mask, positions, (torch.tensor(end_seq), torch.tensor(end_col)), rows))
    return out
