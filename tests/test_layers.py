"""WraparoundConv3d: helix padding, transposition equivariance, shapes; the residual block."""

from __future__ import annotations

import pytest
import torch

from harmonixr.model.layers import ResidualBlock, WraparoundConv3d, wrap_pitch


def helix_to_grid(v: torch.Tensor) -> torch.Tensor:
    """(B, C, 72, T) notes → (B, C, 12, 6, T) grid (k = 12·octave + pitch class)."""
    b, c, _, t = v.shape
    return v.reshape(b, c, 6, 12, t).transpose(2, 3)


def grid_to_helix(x: torch.Tensor) -> torch.Tensor:
    b, c, _, _, t = x.shape
    return x.transpose(2, 3).reshape(b, c, 72, t)


def transpose_up(v: torch.Tensor) -> torch.Tensor:
    """Every note one semitone up the 72-note helix."""
    out = torch.zeros_like(v)
    out[:, :, 1:] = v[:, :, :-1]
    return out


def _input(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    v = torch.zeros(2, 3, 72, 9)
    v[:, :, 14:58] = torch.rand(2, 3, 44, 9, generator=g)  # away from F1 and E7
    return v


@pytest.mark.parametrize("kernel", [3, 5])
def test_helix_conv_commutes_with_semitone_transposition(kernel):
    torch.manual_seed(0)
    conv = WraparoundConv3d(3, 4, kernel, padding=kernel // 2, mode="helix").double()
    v = _input().double()
    a = grid_to_helix(conv(helix_to_grid(transpose_up(v))))
    b = transpose_up(grid_to_helix(conv(helix_to_grid(v))))
    torch.testing.assert_close(a[:, :, 1:], b[:, :, 1:], rtol=1e-12, atol=1e-12)


def test_circular_conv_is_not_equivariant():
    torch.manual_seed(0)
    conv = WraparoundConv3d(3, 4, 3, padding=1, mode="circular").double()
    v = _input().double()
    a = grid_to_helix(conv(helix_to_grid(transpose_up(v))))
    b = transpose_up(grid_to_helix(conv(helix_to_grid(v))))
    assert (a[:, :, 1:] - b[:, :, 1:]).abs().max() > 1e-3


def test_helix_padding_takes_neighbouring_octaves():
    x = torch.arange(72.0).reshape(1, 1, 6, 12, 1).transpose(2, 3)  # value = note index k
    padded = wrap_pitch(x, 1, "helix")
    assert padded.shape == (1, 1, 14, 6, 1)
    # below pitch class 0 of octave 2 (k = 24): k = 23; above pitch class 11 of octave 2: 36
    assert padded[0, 0, 0, 2, 0] == 23 and padded[0, 0, 13, 2, 0] == 36
    assert padded[0, 0, 0, 0, 0] == 0 and padded[0, 0, 13, 5, 0] == 0  # beyond F1 / E7: zeros
    circ = wrap_pitch(x, 1, "circular")
    assert circ[0, 0, 0, 2, 0] == 35 and circ[0, 0, 13, 2, 0] == 24
    zeros = wrap_pitch(x, 1, "zeros")
    assert zeros[0, 0, 0, 2, 0] == 0


def test_kernel3_padding1_keeps_shape_and_stride_downsamples():
    x = torch.rand(2, 1, 12, 6, 40)
    assert WraparoundConv3d(1, 5, 3, padding=1)(x).shape == (2, 5, 12, 6, 40)
    assert WraparoundConv3d(1, 5, (3, 3, 4), stride=(1, 1, 4), padding=(1, 1, 0))(x).shape == (
        2,
        5,
        12,
        6,
        10,
    )
    with pytest.raises(ValueError, match="mode"):
        WraparoundConv3d(1, 1, 3, mode="spiral")


def test_residual_block_projects_when_channels_change():
    block = ResidualBlock(4, 8).eval()
    x = torch.rand(2, 4, 12, 6, 10)
    assert block(x).shape == (2, 8, 12, 6, 10)
    same = ResidualBlock(8, 8)
    assert isinstance(same.skip, torch.nn.Identity)
