"""TTSR model: LTE, main network, forward contract, losses and the training step."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from liif.ttsr import TTSR, TTSROutput, build_ttsr, ttsr_train_step
from liif.ttsr.losses import (
    Discriminator,
    VGGPerceptualLoss,
    gradient_penalty,
    reconstruction_loss,
    transferal_perceptual_loss,
)
from liif.ttsr.lte import VGG_MEAN, VGG_STD, LearnableTextureExtractor, vgg19_layers
from liif.ttsr.mainnet import MainNet
from liif.ttsr.train import TTSRLossWeights, make_ttsr_optimizers

SMALL = {"num_res_blocks": "1+1+1+1", "n_feats": 16}


def _inputs(seed: int, b: int = 2, h: int = 6, w: int = 5, hr: int = 20, wr: int = 28):
    g = torch.Generator().manual_seed(seed)
    lr = torch.rand(b, 3, h, w, generator=g) * 2 - 1
    lr_up = torch.nn.functional.interpolate(lr, scale_factor=4, mode="bicubic").clamp(-1, 1)
    ref = torch.rand(b, 3, hr, wr, generator=g) * 2 - 1
    ref_du = torch.rand(b, 3, hr, wr, generator=g) * 2 - 1
    return lr, lr_up, ref, ref_du


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A torchvision-style VGG19 ``features.*`` state_dict with random weights (30 layers)."""
    torch.manual_seed(123)
    features = nn.Sequential(*vgg19_layers(30))
    sd = {f"features.{k}": v for k, v in features.state_dict().items()}
    path = tmp_path_factory.mktemp("vgg") / "vgg19.pth"
    torch.save(sd, path)
    return path


# ---------------------------------------------------------------- LTE


def test_lte_levels_and_mean_shift() -> None:
    torch.manual_seed(0)
    lte = LearnableTextureExtractor()
    x = torch.rand(1, 3, 20, 28)
    lv1, lv2, lv3 = lte(x)
    assert lv1.shape == (1, 64, 20, 28) and lv2.shape == (1, 128, 10, 14)
    assert lv3.shape == (1, 256, 5, 7)
    mean = torch.tensor(VGG_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(VGG_STD).view(1, 3, 1, 1)
    assert torch.allclose(lte.sub_mean(x), (x - mean) / std, atol=1e-6)
    assert not lte.sub_mean.weight.requires_grad
    assert (lv1 >= 0).all() and (lv3 >= 0).all()  # relu1_1 / relu3_1 outputs


def test_lte_from_vgg_file(vgg_file: Path, tmp_path: Path) -> None:
    sd = torch.load(vgg_file, weights_only=True)
    lte = LearnableTextureExtractor(vgg_weights=vgg_file)
    for key, idx in (("slice1.0", 0), ("slice2.2", 2), ("slice2.5", 5), ("slice3.7", 7),
                     ("slice3.10", 10)):
        assert torch.equal(lte.state_dict()[f"{key}.weight"], sd[f"features.{idx}.weight"])
        assert torch.equal(lte.state_dict()[f"{key}.bias"], sd[f"features.{idx}.bias"])
    from safetensors.torch import save_file

    st = tmp_path / "vgg19.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(st))
    assert torch.equal(
        LearnableTextureExtractor(vgg_weights=st).slice3[3].weight, sd["features.10.weight"]
    )


def test_lte_vgg_file_errors(vgg_file: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        LearnableTextureExtractor(vgg_weights=tmp_path / "nope.pth")
    sd = torch.load(vgg_file, weights_only=True)
    renamed = tmp_path / "renamed.pth"
    torch.save({k.replace("features.", "body."): v for k, v in sd.items()}, renamed)
    with pytest.raises(ValueError, match=r"missing \['features.0.weight'"):
        LearnableTextureExtractor(vgg_weights=renamed)
    wrong = dict(sd)
    wrong["features.5.weight"] = torch.zeros(64, 64, 3, 3)
    wrong_path = tmp_path / "wrong.pth"
    torch.save(wrong, wrong_path)
    with pytest.raises(ValueError, match=r"features.5.weight: file \(64, 64, 3, 3\)"):
        LearnableTextureExtractor(vgg_weights=wrong_path)


# ---------------------------------------------------------------- model


def test_state_dict_prefixes_and_spec() -> None:
    torch.manual_seed(0)
    model = TTSR(**SMALL, search_chunk=7)
    keys = list(model.state_dict())
    assert all(k.startswith(("MainNet.", "LTE.")) for k in keys)
    assert "LTE.sub_mean.weight" in keys and "MainNet.RB33.0.conv2.bias" in keys
    assert model.spec == {
        "name": "ttsr",
        "args": {"num_res_blocks": [1, 1, 1, 1], "n_feats": 16, "res_scale": 1.0,
                 "search_chunk": 7, "exact_search": True},
    }
    clone = build_ttsr(model.spec["args"])
    assert {k: v.shape for k, v in clone.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }


def test_forward_shapes_and_textures() -> None:
    torch.manual_seed(0)
    model = TTSR(**SMALL).eval()
    lr, lr_up, ref, ref_du = _inputs(0)
    with torch.no_grad():
        sr = model(lr, lr_up, ref, ref_du)
        out = model(lr, lr_up, ref, ref_du, return_textures=True)
    assert sr.shape == (2, 3, 24, 20)
    assert isinstance(out, TTSROutput) and torch.equal(out.sr, sr)
    assert out.score.shape == (2, 1, 6, 5) and out.index.shape == (2, 30)
    assert [tuple(t.shape) for t in out.textures] == [(2, 64, 24, 20), (2, 128, 12, 10),
                                                      (2, 256, 6, 5)]
    assert int(out.index.max()) < (20 // 4) * (28 // 4)
    assert torch.isfinite(sr).all() and sr.abs().max() <= 1.0


def test_search_chunk_does_not_change_output() -> None:
    torch.manual_seed(0)
    chunked = TTSR(**SMALL, search_chunk=3).eval()
    full = TTSR(**SMALL, search_chunk=None).eval()
    full.load_state_dict(chunked.state_dict())
    inputs = _inputs(1)
    with torch.no_grad():
        assert torch.equal(chunked(*inputs), full(*inputs))


def test_clamp_only_in_eval() -> None:
    torch.manual_seed(0)
    model = TTSR(**SMALL)
    with torch.no_grad():
        model.MainNet.merge_tail.conv_tail2.bias.fill_(5.0)
    inputs = _inputs(2)
    with torch.no_grad():
        assert model.train()(*inputs).min() > 1.0
        assert model.eval()(*inputs).max() == 1.0


def test_soft_attention_gates_textures() -> None:
    torch.manual_seed(0)
    net = MainNet((1, 1, 1, 1), 16).eval()
    lr = torch.rand(1, 3, 4, 5) * 2 - 1
    t1, t2, t3 = torch.rand(1, 64, 16, 20), torch.rand(1, 128, 8, 10), torch.rand(1, 256, 4, 5)
    other = (t1 * 3, t2 - 1, t3 + 2)
    with torch.no_grad():
        zero = torch.zeros(1, 1, 4, 5)
        assert torch.equal(net(lr, zero, (t1, t2, t3)), net(lr, zero, other))
        one = torch.ones(1, 1, 4, 5)
        assert not torch.allclose(net(lr, one, (t1, t2, t3)), net(lr, one, other))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"ref": torch.zeros(2, 3, 18, 28), "ref_du": torch.zeros(2, 3, 18, 28)},
         "multiples of 4"),
        ({"lr_up": torch.zeros(2, 3, 24, 21)}, r"lr_up must be \(B, 3, 24, 20\)"),
        ({"ref_du": torch.zeros(2, 3, 20, 24)}, "differ"),
        ({"ref": torch.zeros(1, 3, 20, 28)}, "batch 1"),
        ({"lr": torch.zeros(2, 1, 6, 5)}, r"lr must be \(B, 3, H, W\)"),
    ],
)
def test_forward_validation(change: dict[str, torch.Tensor], match: str) -> None:
    model = TTSR(**SMALL)
    lr, lr_up, ref, ref_du = _inputs(3)
    args = {"lr": lr, "lr_up": lr_up, "ref": ref, "ref_du": ref_du, **change}
    with pytest.raises(ValueError, match=match):
        model(args["lr"], args["lr_up"], args["ref"], args["ref_du"])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_res_blocks": "16+16+8"}, "4 non-negative"),
        ({"num_res_blocks": "a+b+c+d"}, "16\\+16\\+8\\+4"),
        ({"search_chunk": 0}, "search_chunk must be"),
    ],
)
def test_constructor_validation(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TTSR(**kwargs)  # type: ignore[arg-type]


def test_texture_features_freeze_lte() -> None:
    torch.manual_seed(0)
    model = TTSR(**SMALL)
    sr = (torch.rand(1, 3, 16, 12) * 2 - 1).requires_grad_(True)
    feats = model.texture_features(sr)
    expected = model.LTE((sr.detach() + 1) / 2)
    for f, e in zip(feats, expected, strict=True):
        assert torch.allclose(f, e)
    sum(f.sum() for f in feats).backward()
    assert sr.grad is not None and sr.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.LTE.parameters())


# ---------------------------------------------------------------- losses


def test_transferal_perceptual_loss() -> None:
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(2, c, s, s, generator=g) for c, s in ((64, 8), (128, 4), (256, 2))]
    tex = [torch.randn_like(f) for f in feats]
    assert transferal_perceptual_loss(feats, feats).item() == 0.0
    l1 = sum((f - t).abs().mean() for f, t in zip(feats, tex, strict=True)) / 3
    assert torch.allclose(transferal_perceptual_loss(feats, tex), l1)
    l2 = sum(((f - t) ** 2).mean() for f, t in zip(feats, tex, strict=True)) / 3
    assert torch.allclose(transferal_perceptual_loss(feats, tex, kind="l2"), l2)
    # a score of 0 weights everything by sigmoid(0) = 1/2
    half = transferal_perceptual_loss(feats, tex, score=torch.zeros(2, 1, 2, 2))
    assert torch.allclose(half, l1 / 2)
    with pytest.raises(ValueError, match="'l3'"):
        transferal_perceptual_loss(feats, tex, kind="l3")
    with pytest.raises(ValueError, match="level 2"):
        transferal_perceptual_loss(feats, [tex[0], tex[1][:, :64], tex[2]])


def test_gradient_penalty_of_linear_critic() -> None:
    class Linear(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.full((3, 4, 4), 0.1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x * self.w).flatten(1).sum(1, keepdim=True)

    real, fake = torch.rand(3, 3, 4, 4), torch.rand(3, 3, 4, 4)
    gp = gradient_penalty(Linear(), real, fake)
    # grad of a linear critic is w everywhere: ||w|| = 0.1 * sqrt(48)
    assert math.isclose(gp.item(), (0.1 * math.sqrt(48) - 1) ** 2, rel_tol=1e-5)


def test_discriminator_and_perceptual_validation(vgg_file: Path) -> None:
    assert Discriminator(32)(torch.zeros(2, 3, 32, 32)).shape == (2, 1)
    with pytest.raises(ValueError, match="multiple of 32, got 40"):
        Discriminator(40)
    with pytest.raises(ValueError, match=r"expects \(B, 3, 32, 32\)"):
        Discriminator(32)(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="needs a local VGG19 weights file"):
        VGGPerceptualLoss(None)  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        VGGPerceptualLoss(vgg_file.parent / "missing.pth")
    per = VGGPerceptualLoss(vgg_file)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert per(x, x).item() == 0.0 and per(x, -x).item() > 0.0
    with pytest.raises(ValueError, match="differ"):
        reconstruction_loss(x, x[..., :16])


# ---------------------------------------------------------------- training


def _batch(seed: int, side: int = 8) -> dict[str, torch.Tensor]:
    lr, lr_up, ref, ref_du = _inputs(seed, b=1, h=side, w=side, hr=4 * side, wr=4 * side)
    g = torch.Generator().manual_seed(seed + 100)
    hr = (lr_up + 0.1 * torch.randn(lr_up.shape, generator=g)).clamp(-1, 1)
    return {"lr": lr, "lr_up": lr_up, "hr": hr, "ref": ref, "ref_down_up": ref_du}


def test_rec_loss_decreases() -> None:
    torch.manual_seed(0)
    model = TTSR(**SMALL)
    optimizers = make_ttsr_optimizers(model, lr=1e-3, lr_lte=1e-4)
    batch = _batch(0, side=6)
    losses = [ttsr_train_step(model, batch, optimizers, mode="rec") for _ in range(20)]
    assert set(losses[0]) == {"rec", "loss"}
    values = [d["loss"] for d in losses]
    assert all(math.isfinite(v) for v in values)
    assert sum(values[-3:]) / 3 < 0.85 * values[0], values


def test_full_mode_steps(vgg_file: Path) -> None:
    torch.manual_seed(0)
    model = TTSR(**SMALL)
    disc = Discriminator(32)
    optimizers = make_ttsr_optimizers(model, discriminator=disc)
    per = VGGPerceptualLoss(vgg_file)
    d_before = [p.detach().clone() for p in disc.parameters()]
    lte_before = model.LTE.slice3[3].weight.detach().clone()
    batch = _batch(1)
    for _ in range(3):
        logs = ttsr_train_step(model, batch, optimizers, mode="full", discriminator=disc,
                               perceptual=per, gan_k=1)
        assert set(logs) == {"rec", "per", "tpl", "adv", "d_loss", "loss"}
        assert all(math.isfinite(v) for v in logs.values()), logs
        parts = logs["rec"] + logs["per"] + logs["tpl"] + logs["adv"]
        assert math.isclose(logs["loss"], parts, rel_tol=1e-5, abs_tol=1e-7)
    assert any(not torch.equal(a, b) for a, b in zip(d_before, disc.parameters(), strict=True))
    assert not torch.equal(lte_before, model.LTE.slice3[3].weight)
    assert all(p.requires_grad for p in disc.parameters())
    # without a VGG file the perceptual term is left out
    no_per = ttsr_train_step(model, batch, optimizers, mode="full", discriminator=disc, gan_k=1)
    assert "per" not in no_per and "tpl" in no_per


def test_train_step_validation() -> None:
    model = TTSR(**SMALL)
    optimizers = make_ttsr_optimizers(model)
    batch = _batch(2, side=4)
    with pytest.raises(ValueError, match="needs a discriminator"):
        ttsr_train_step(model, batch, optimizers, mode="full")
    with pytest.raises(ValueError, match="'gan'"):
        ttsr_train_step(model, batch, optimizers, mode="gan")
    with pytest.raises(ValueError, match=r"lacks \['hr'\]"):
        ttsr_train_step(model, {k: v for k, v in batch.items() if k != "hr"}, optimizers)
    with pytest.raises(ValueError, match="adv must be >= 0"):
        TTSRLossWeights(adv=-1.0)
    # adv weight 0: full mode runs without a critic
    logs = ttsr_train_step(model, batch, optimizers, mode="full",
                           loss_weights=TTSRLossWeights(adv=0.0))
    assert set(logs) == {"rec", "tpl", "loss"}
