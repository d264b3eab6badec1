"""Rotary positions applied to q and k in one pass equal each rotated alone, as transformers rotates them."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.parametrize("rotary_dim", [8, 4])
def test_q_and_k_adjacent_in_one_output_are_rotated_as_each_alone(rotary_dim):
    from modelport.models.rope import Rotation

    tokens, dim = 3, 8
    out = torch.randn(tokens, (4 + 2 + 2) * dim)
    q, k = out[:, : 4 * dim].view(tokens, 4, dim), out[:, 4 * dim : 6 * dim].view(tokens, 2, dim)
    angles = torch.randn(tokens, 1, rotary_dim)
    rotation = Rotation(angles.cos(), angles.sin(), rotary_dim)

    def reference(x: torch.Tensor) -> torch.Tensor:  # transformers' rotate_half formula
        r, passed = x[..., :rotary_dim], x[..., rotary_dim:]
        half = rotary_dim // 2
        turned = torch.cat((-r[..., half:], r[..., :half]), dim=-1)
        return torch.cat((r * rotation.cos + turned * rotation.sin, passed), dim=-1)

    pair = rotation.apply_pair(q, k)
    alone = rotation.apply_pair(q.contiguous(), k.contiguous())
    for got, other, x in zip(pair, alone, (q, k), strict=True):
        assert torch.equal(got, reference(x)) and torch.equal(other, reference(x))
