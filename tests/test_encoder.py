"""SiaViT: presets, padding never changes an embedding, weights round-trip."""

from __future__ import annotations

import pytest
import torch

from harmonixr.model import PRESETS, ModelConfig, SiaViT, load, save_weights


@pytest.mark.parametrize("name", ["tiny", "small", "base"])
def test_presets_build_and_embed_unit_vectors(name):
    model = SiaViT(PRESETS[name]).eval()
    with torch.no_grad():
        z = model(torch.rand(2, 1, 12, 6, 160))
    assert z.shape == (2, PRESETS[name].embed_dim)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(2))


def test_base_preset_is_the_original_scale():
    c = PRESETS["base"]
    assert (c.stem_channels, *c.stages) == (32, 64, 128)
    assert (c.d_model, c.n_layers, c.n_heads, c.d_ff, c.embed_dim) == (512, 3, 8, 1024, 128)


@pytest.mark.parametrize("name", ["tiny", "small"])
@pytest.mark.parametrize("length", [160, 157, 3])
def test_padding_is_masked_out(name, length):
    torch.manual_seed(0)
    model = SiaViT(PRESETS[name]).eval()
    x = torch.rand(1, 1, 12, 6, length)
    padded = torch.zeros(1, 1, 12, 6, 2 * length + 5)
    padded[..., :length] = x
    with torch.no_grad():
        alone = model(x, torch.tensor([length]))
        both = model(
            torch.cat([padded, torch.rand_like(padded)]), torch.tensor([length, 2 * length + 5])
        )
    torch.testing.assert_close(both[0:1], alone, rtol=1e-5, atol=1e-5)
    # and the mask matters: without lengths the padded crop embeds differently
    with torch.no_grad():
        unmasked = model(padded)
    assert (unmasked - alone).abs().max() > 1e-4


def test_config_validation_and_round_trip():
    c = PRESETS["small"]
    assert ModelConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="wrap"):
        ModelConfig(wrap="nope")
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(d_model=100, n_heads=3)
    with pytest.raises(ValueError, match="unknown model config"):
        ModelConfig.from_dict({"colour": "red"})


def test_weights_round_trip(tmp_path):
    model = SiaViT(PRESETS["tiny"]).eval()
    save_weights(model, tmp_path / "model.safetensors", step=3)
    again = load(tmp_path)
    x = torch.rand(2, 1, 12, 6, 64)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))
    assert again.config == model.config
    with pytest.raises(ValueError, match="no such weights"):
        load(tmp_path / "absent")
