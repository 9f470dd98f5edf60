"""LeanDet: the project's anchor-free single-stage detector, built for INT8 and TensorRT.

Design choices, each for deployment:
- only Conv + BatchNorm + ReLU (BN folds into the conv; ReLU quantizes cleanly, SiLU does not),
  nearest upsampling, max pooling and concatenation: every op has a TensorRT INT8 kernel;
- channel counts are multiples of 8 (tensor-core and INT8 kernels want them);
- rectangular input (640×192 for 1224×370 frames: a square input would spend most pixels on padding);
- FPN/PAN neck over strides 8, 16, 32 and a decoupled head (classification and box branches);
- the export (`DecodedOutputs`) decodes in-graph to one tensor, so a runtime needs no PyTorch and
  no anchor logic;
- channel counts follow the width multiplier unless given per convolution (`layer_channels`), as
  a pruned model's are.

Output layout of the exported model (`output`, float32, [1, N, 4 + num_classes]):
N = sum over strides s in (8, 16, 32) of (H/s)·(W/s) grid cells, stride 8 first, each level in
row-major order. Columns: x1, y1, x2, y2 in network-input pixels, then one sigmoid probability per
class (no objectness: score = class probability). Decoder name in manifests: "builtin".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

STRIDES = (8, 16, 32)


@dataclass(frozen=True)
class LeanDetConfig:
    num_classes: int
    width: float = 0.45  # channel multiplier
    depth: float = 0.34  # block-count multiplier
    input_height: int = 192
    input_width: int = 640

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS = {
    "teacher": {"width": 0.45, "depth": 0.34},  # 2.1 M parameters: an 8.3 MB fp32 checkpoint
    "student": {"width": 0.25, "depth": 0.34},
}


def preset_config(name: str, num_classes: int, input_height: int = 192, input_width: int = 640) -> LeanDetConfig:
    if name not in PRESETS:
        raise ValueError(f"preset {name!r}: expected one of {', '.join(PRESETS)}")
    return LeanDetConfig(num_classes=num_classes, input_height=input_height, input_width=input_width, **PRESETS[name])


def _channels(base: int, width: float) -> int:
    # multiples of 16, so that the halves inside CSP blocks are multiples of 8 too
    return max(16, int(round(base * width / 16)) * 16)


class ConvBNReLU(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, k: int = 3, s: int = 1):
        super().__init__(nn.Conv2d(c_in, c_out, k, s, k // 2, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class Bottleneck(nn.Module):
    def __init__(self, c: int, shortcut: bool = True):
        super().__init__()
        self.conv1 = ConvBNReLU(c, c, 3)
        self.conv2 = ConvBNReLU(c, c, 3)
        self.shortcut = shortcut

    def forward(self, x):
        y = self.conv2(self.conv1(x))
        return x + y if self.shortcut else y


class CSPBlock(nn.Module):
    """Split into two halves, run blocks on one, concatenate, mix with a 1×1 convolution."""

    def __init__(self, c_in: int, c_out: int, n: int, shortcut: bool = True):
        super().__init__()
        hidden = c_out // 2
        self.split_main = ConvBNReLU(c_in, hidden, 1)
        self.split_skip = ConvBNReLU(c_in, hidden, 1)
        self.blocks = nn.Sequential(*(Bottleneck(hidden, shortcut) for _ in range(n)))
        self.merge = ConvBNReLU(2 * hidden, c_out, 1)

    def forward(self, x):
        return self.merge(torch.cat([self.blocks(self.split_main(x)), self.split_skip(x)], 1))


class SPPF(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.reduce = ConvBNReLU(c, c // 2, 1)
        self.pool = nn.MaxPool2d(5, 1, 2)
        self.merge = ConvBNReLU(c * 2, c, 1)

    def forward(self, x):
        x = self.reduce(x)
        p1 = self.pool(x)
        p2 = self.pool(p1)
        return self.merge(torch.cat([x, p1, p2, self.pool(p2)], 1))


class Head(nn.Module):
    """Decoupled head for one level: class logits and box distances (left, top, right, bottom)."""

    def __init__(self, c_in: int, c_head: int, num_classes: int):
        super().__init__()
        self.stem = ConvBNReLU(c_in, c_head, 1)
        self.cls_branch = nn.Sequential(ConvBNReLU(c_head, c_head), ConvBNReLU(c_head, c_head))
        self.box_branch = nn.Sequential(ConvBNReLU(c_head, c_head), ConvBNReLU(c_head, c_head))
        self.cls_out = nn.Conv2d(c_head, num_classes, 1)
        self.box_out = nn.Conv2d(c_head, 4, 1)
        nn.init.constant_(self.cls_out.bias, -4.6)  # prior probability 0.01: stable early training
        nn.init.constant_(self.box_out.bias, 0.5)

    def forward(self, x):
        x = self.stem(x)
        return self.cls_out(self.cls_branch(x)), self.box_out(self.box_branch(x))


class LeanDet(nn.Module):
    """`layer_channels` ({convolution name: (in, out)}, as `layer_channels(model)` returns) overrides
    the widths that `config.width` gives, for the convolutions it names."""

    def __init__(self, config: LeanDetConfig, layer_channels: Mapping[str, tuple[int, int]] | None = None):
        super().__init__()
        self.config = config
        w, d = config.width, config.depth
        c1, c2, c3, c4, c5 = (_channels(c, w) for c in (32, 64, 128, 256, 512))
        n = max(1, round(3 * d))
        self.stem = ConvBNReLU(3, c1, 3, 2)
        self.stage2 = nn.Sequential(ConvBNReLU(c1, c2, 3, 2), CSPBlock(c2, c2, n))
        self.stage3 = nn.Sequential(ConvBNReLU(c2, c3, 3, 2), CSPBlock(c3, c3, 2 * n))
        self.stage4 = nn.Sequential(ConvBNReLU(c3, c4, 3, 2), CSPBlock(c4, c4, 2 * n))
        self.stage5 = nn.Sequential(ConvBNReLU(c4, c5, 3, 2), CSPBlock(c5, c5, n), SPPF(c5))
        # FPN (top-down) then PAN (bottom-up)
        self.lateral5 = ConvBNReLU(c5, c4, 1)
        self.top_down4 = CSPBlock(2 * c4, c4, n, shortcut=False)
        self.lateral4 = ConvBNReLU(c4, c3, 1)
        self.top_down3 = CSPBlock(2 * c3, c3, n, shortcut=False)
        self.down3 = ConvBNReLU(c3, c3, 3, 2)
        self.bottom_up4 = CSPBlock(2 * c3, c4, n, shortcut=False)
        self.down4 = ConvBNReLU(c4, c4, 3, 2)
        self.bottom_up5 = CSPBlock(2 * c4, c5, n, shortcut=False)
        c_head = c3
        self.heads = nn.ModuleList(Head(c, c_head, config.num_classes) for c in (c3, c4, c5))
        if layer_channels:
            _resize_convolutions(self, layer_channels)

    def _features(self, x):
        p3 = self.stage3(self.stage2(self.stem(x)))
        p4 = self.stage4(p3)
        p5 = self.stage5(p4)
        l5 = self.lateral5(p5)
        t4 = self.top_down4(torch.cat([F.interpolate(l5, scale_factor=2.0, mode="nearest"), p4], 1))
        l4 = self.lateral4(t4)
        t3 = self.top_down3(torch.cat([F.interpolate(l4, scale_factor=2.0, mode="nearest"), p3], 1))
        b4 = self.bottom_up4(torch.cat([self.down3(t3), l4], 1))
        b5 = self.bottom_up5(torch.cat([self.down4(b4), l5], 1))
        return t3, b4, b5

    @staticmethod
    def anchors(height: int, width: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Cell centres (N, 2) in input pixels and their strides (N,), in the output's order.

        Computed on every call (a few thousand cells: negligible next to the convolutions), so the
        model has no state that forward() mutates; the exporter turns it into constants.
        """
        points, strides = [], []
        for s in STRIDES:
            ys, xs = torch.meshgrid(
                torch.arange(height // s, device=device), torch.arange(width // s, device=device), indexing="ij"
            )
            points.append(torch.stack([xs, ys], -1).reshape(-1, 2).float().add(0.5).mul(s))
            strides.append(torch.full((points[-1].shape[0],), float(s), device=device))
        return torch.cat(points), torch.cat(strides)

    def forward(self, x):
        """(class logits [B, N, C], boxes xyxy [B, N, 4] in input pixels); `DecodedOutputs` for the export's."""
        cls_levels, box_levels = [], []
        for feature, head in zip(self._features(x), self.heads):
            cls, box = head(feature)
            cls_levels.append(cls.flatten(2))
            box_levels.append(box.flatten(2))
        cls = torch.cat(cls_levels, 2).transpose(1, 2)
        distances = F.softplus(torch.cat(box_levels, 2).transpose(1, 2))
        points, strides = self.anchors(x.shape[2], x.shape[3], x.device)
        scaled = distances * strides[:, None]
        boxes = torch.cat([points - scaled[..., :2], points + scaled[..., 2:]], -1)
        return cls, boxes


class DecodedOutputs(nn.Module):
    """A LeanDet whose output is the exported model's: one tensor [B, N, 4 + C] of boxes and class
    probabilities (the layout in this module's docstring)."""

    def __init__(self, model: LeanDet):
        super().__init__()
        self.model = model

    def forward(self, x):
        cls, boxes = self.model(x)
        return torch.cat([boxes, cls.sigmoid()], -1)


def layer_channels(model: nn.Module) -> dict[str, tuple[int, int]]:
    """{name: (in channels, out channels)} of every convolution: the widths a checkpoint records."""
    return {name: (m.in_channels, m.out_channels) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def _resize_convolutions(model: LeanDet, channels: Mapping[str, tuple[int, int]]) -> None:
    """Rebuild the named convolutions (and the BatchNorm after each) at the given widths."""
    modules = dict(model.named_modules())
    for name, (c_in, c_out) in channels.items():
        conv = modules.get(name)
        if not isinstance(conv, nn.Conv2d):
            raise ValueError(f"layer_channels: {name!r} is not a convolution of LeanDet")
        if (conv.in_channels, conv.out_channels) == (c_in, c_out):
            continue
        parent_name, _, child = name.rpartition(".")
        parent = modules[parent_name]
        parent.register_module(
            child,
            nn.Conv2d(c_in, c_out, conv.kernel_size, conv.stride, conv.padding, bias=conv.bias is not None),
        )
        # In ConvBNReLU the BatchNorm follows its convolution; the head's output convolutions have none.
        if isinstance(parent, ConvBNReLU):
            parent.register_module(str(int(child) + 1), nn.BatchNorm2d(c_out))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def gflops(model: LeanDet) -> float:
    """Multiply-accumulates ×2 of one forward pass at the configured input size (convolutions only)."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        kernel = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
        total += 2 * kernel * output.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, model.config.input_height, model.config.input_width))
    model.train(was_training)
    for h in handles:
        h.remove()
    return total / 1e9
