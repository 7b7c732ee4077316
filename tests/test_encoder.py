"""SiaViT: presets, padding never changes an embedding, weights round-trip."""

from __future__ import annotations

import pytest
import torch

from harmonixr.model import PRESETS, ModelConfig, SiaViT, load_encoder, save_weights


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


@pytest.mark.parametrize("name", ["tiny", "small"])
@pytest.mark.parametrize("length", [157, 40])
def test_padding_changes_nothing_in_train_mode(name, length):
    """docs/architecture.md (the model): in train mode too, a padded crop computes and learns
    exactly what the crop alone would: same outputs, same batch-norm running statistics, same
    gradients."""
    config = PRESETS[name].replace(conv_dropout=0.0, dropout=0.0)  # dropout draws differ
    torch.manual_seed(0)
    a, b = SiaViT(config).train(), SiaViT(config).train()
    b.load_state_dict(a.state_dict())
    x = torch.rand(1, 1, 12, 6, length)
    padded = torch.zeros(1, 1, 12, 6, 3 * length + 11)
    padded[..., :length] = x
    za = a(x, torch.tensor([length]))
    zb = b(padded, torch.tensor([length]))
    torch.testing.assert_close(zb, za, rtol=1e-5, atol=1e-5)
    buffers_a, buffers_b = dict(a.named_buffers()), dict(b.named_buffers())
    assert any(k.endswith("running_mean") for k in buffers_a)
    for k, v in buffers_a.items():
        torch.testing.assert_close(buffers_b[k], v, rtol=1e-5, atol=1e-6, msg=k)
    (za * torch.arange(za.shape[1])).sum().backward()
    (zb * torch.arange(zb.shape[1])).sum().backward()
    for (k, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        torch.testing.assert_close(pb.grad, pa.grad, rtol=1e-4, atol=1e-4, msg=k)


def test_masked_batch_norm_keeps_batch_norm_state_and_statistics():
    from torch import nn

    from harmonixr.model.layers import MaskedBatchNorm3d

    plain, masked = nn.BatchNorm3d(3), MaskedBatchNorm3d(3)
    assert plain.state_dict().keys() == masked.state_dict().keys()
    masked.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 4, 2, 9)
    mask = torch.tensor([[True] * 9, [True] * 5 + [False] * 4])[:, None, None, None, :]
    out = masked(x, mask)
    # the statistics of the valid frames alone, as plain batch norm computes them
    valid = torch.cat([x[0].reshape(3, -1), x[1, ..., :5].reshape(3, -1)], dim=1)
    mean, var = valid.mean(1), valid.var(1, unbiased=False)
    want = (x - mean.view(1, 3, 1, 1, 1)) / torch.sqrt(var.view(1, 3, 1, 1, 1) + masked.eps)
    torch.testing.assert_close(out[0], want[0])
    torch.testing.assert_close(out[1, ..., :5], want[1, ..., :5])
    torch.testing.assert_close(masked.running_mean, 0.1 * mean)
    torch.testing.assert_close(masked.running_var, 0.9 + 0.1 * valid.var(1, unbiased=True))
    assert int(masked.num_batches_tracked) == 1
    masked.eval()  # running statistics: the mask no longer matters
    torch.testing.assert_close(masked(x, mask), masked(x))


def test_checkpoints_of_the_plain_batch_norm_model_still_load():
    model = SiaViT(PRESETS["tiny"])
    keys = {k: tuple(v.shape) for k, v in model.state_dict().items() if "norm" in k or "skip" in k}
    assert "stem_norm.running_var" in keys and "blocks.0.skip.1.num_batches_tracked" in keys
    assert keys["blocks.0.norm1.weight"] == (16,)


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
    again = load_encoder(tmp_path)
    x = torch.rand(2, 1, 12, 6, 64)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))
    assert again.config == model.config
    with pytest.raises(ValueError, match="no such weights"):
        load_encoder(tmp_path / "absent")
