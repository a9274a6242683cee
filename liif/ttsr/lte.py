"""Learnable texture extractor (LTE): VGG19 layers up to relu3_1, key-compatible with TTSR.

The official checkpoints store the extractor as ``LTE.slice1.0``, ``LTE.slice2.{2,5}``,
``LTE.slice3.{7,10}`` and ``LTE.sub_mean`` (a frozen 1x1 conv that applies the ImageNet
mean/std). The slice indices are the positions of the layers in torchvision's
``vgg19().features``, which is also how a local VGG19 weights file is mapped onto them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

VGG_MEAN = (0.485, 0.456, 0.406)
VGG_STD = (0.229, 0.224, 0.225)

# torchvision's VGG19 configuration "E": conv widths, "M" = 2x2 max-pool.
_VGG19_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
    512, 512, 512, 512, "M", 512, 512, 512, 512, "M",
)

# Layer ranges of vgg19().features held by each LTE slice.
_LTE_SLICES = {"slice1": range(0, 2), "slice2": range(2, 7), "slice3": range(7, 12)}


class MeanShift(nn.Conv2d):
    """Frozen 1x1 conv computing ``(x - mean * rgb_range) / (std * rgb_range)`` per channel."""

    def __init__(
        self,
        mean: tuple[float, float, float] = VGG_MEAN,
        std: tuple[float, float, float] = VGG_STD,
        rgb_range: float = 1.0,
    ) -> None:
        super().__init__(3, 3, kernel_size=1)
        std_t = torch.tensor(std) * rgb_range
        assert self.bias is not None  # Conv2d(bias=True)
        with torch.no_grad():
            self.weight.copy_(torch.eye(3).view(3, 3, 1, 1) / std_t.view(3, 1, 1, 1))
            self.bias.copy_(-rgb_range * torch.tensor(mean) / std_t)
        self.weight.requires_grad_(False)
        self.bias.requires_grad_(False)


def vgg19_layers(stop: int) -> list[nn.Module]:
    """The first ``stop`` layers of torchvision's ``vgg19().features`` (randomly initialised)."""
    layers: list[nn.Module] = []
    cin = 3
    for item in _VGG19_CFG:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers.append(nn.Conv2d(cin, int(item), kernel_size=3, padding=1))
            layers.append(nn.ReLU(inplace=False))
            cin = int(item)
        if len(layers) >= stop:
            break
    if stop > len(layers):
        raise ValueError(f"VGG19 features has {len(layers)} layers, asked for {stop}")
    return layers[:stop]


def read_vgg19_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a local torchvision-style VGG19 state_dict (``features.N.weight`` keys).

    ``.safetensors`` files are read with safetensors, anything else with
    ``torch.load(weights_only=True)``. A ``{"state_dict": ...}`` wrapper is unwrapped.
    Nothing is downloaded.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"VGG19 weights file not found: {str(p)!r}")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(p))
    else:
        sd = torch.load(p, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ValueError(f"{str(p)!r} holds a {type(sd).__name__}, expected a state_dict")
    return sd


def load_vgg19_into(layers: nn.Module, sd: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``features.N.{weight,bias}`` from ``sd`` into every conv of ``layers``.

    ``layers`` is a module whose children are named by their VGG19 feature index (``"0"``,
    ``"2"``, ...) or a container of such modules; every conv must find its two keys with the
    right shapes, else ``ValueError`` lists what is wrong.
    """
    missing: list[str] = []
    bad_shape: list[str] = []
    for name, module in layers.named_modules():
        if not isinstance(module, nn.Conv2d):
            continue
        idx = name.rsplit(".", 1)[-1]
        for attr in ("weight", "bias"):
            key = f"features.{idx}.{attr}"
            target = getattr(module, attr)
            if key not in sd:
                missing.append(key)
            elif tuple(sd[key].shape) != tuple(target.shape):
                bad_shape.append(f"{key}: file {tuple(sd[key].shape)} vs {tuple(target.shape)}")
    if missing or bad_shape:
        found = sorted(k for k in sd if k.startswith("features."))[:4]
        raise ValueError(
            f"{source} is not a VGG19 features state_dict: missing {missing[:6]}, "
            f"shape mismatches {bad_shape[:6]} (first feature keys found: {found})"
        )
    with torch.no_grad():
        for name, module in layers.named_modules():
            if isinstance(module, nn.Conv2d):
                idx = name.rsplit(".", 1)[-1]
                module.weight.copy_(sd[f"features.{idx}.weight"])
                assert module.bias is not None  # vgg19_layers' convs have biases
                module.bias.copy_(sd[f"features.{idx}.bias"])


class LearnableTextureExtractor(nn.Module):
    """VGG19-style extractor returning the relu1_1, relu2_1 and relu3_1 maps.

    ``forward``: ``(B, 3, H, W)`` image in [0, 1] -> ``(lv1, lv2, lv3)`` of shapes
    ``(B, 64, H, W)``, ``(B, 128, H/2, W/2)``, ``(B, 256, H/4, W/4)``.

    Random init by default; ``vgg_weights`` initialises the convs from a local VGG19 file.
    """

    slice1: nn.Sequential  # set by name from _LTE_SLICES in __init__
    slice2: nn.Sequential
    slice3: nn.Sequential

    def __init__(self, vgg_weights: str | Path | None = None, rgb_range: float = 1.0) -> None:
        super().__init__()
        layers = vgg19_layers(12)
        for slice_name, indices in _LTE_SLICES.items():
            seq = nn.Sequential()
            for i in indices:
                seq.add_module(str(i), layers[i])
            setattr(self, slice_name, seq)
        self.sub_mean = MeanShift(rgb_range=rgb_range)
        if vgg_weights is not None:
            sd = read_vgg19_weights(vgg_weights)
            load_vgg19_into(
                nn.ModuleList([self.slice1, self.slice2, self.slice3]), sd, repr(str(vgg_weights))
            )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"LTE expects (B, 3, H, W), got {tuple(x.shape)}")
        lv1 = self.slice1(self.sub_mean(x))
        lv2 = self.slice2(lv1)
        lv3 = self.slice3(lv2)
        return lv1, lv2, lv3
