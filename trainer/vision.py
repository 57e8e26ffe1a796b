"""Vision nets as block stacks, so that a net can be split into a shared trunk and H heads.

A :class:`BlockStack` is ``stem`` → ``blocks[0..n-1]`` → ``tail`` (the tail is the final norm,
pooling and classifier). :func:`split_stack` cuts it so the last ``b`` residual blocks plus the tail
form a head and the rest the trunk; :func:`make_heads` builds H heads, each from a fresh call of a
factory, so every head is separately randomly initialised (never a copy of another head's weights).
:class:`MultiHeadNet` runs the trunk once and every head on its output.

Nets (no torchvision; written from the architecture descriptions):

- :func:`wrn_stack`: Wide ResNet (Zagoruyko & Komodakis 2016), pre-activation basic blocks, CIFAR
  stem; WRN-28-10 has 3 groups × 4 blocks = 12 residual blocks.
- :func:`resnet_bottleneck_stack`: ResNet-50 (He et al. 2016) bottleneck blocks (stride on the 3×3
  conv, "v1.5"), ImageNet stem; 3 + 4 + 6 + 3 = 16 residual blocks.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = [
    "BlockStack",
    "BottleneckBlock",
    "MultiHeadNet",
    "WideBasicBlock",
    "fresh_copy",
    "init_conv_net",
    "make_heads",
    "resnet_bottleneck_stack",
    "split_stack",
    "wrn_stack",
]


@dataclass
class BlockStack:
    """A net as ``stem`` → residual ``blocks`` → ``tail`` (norm, pooling, classifier)."""

    stem: nn.Module
    blocks: list[nn.Module] = field(default_factory=list)
    tail: nn.Module = field(default_factory=nn.Identity)

    def as_module(self) -> nn.Sequential:
        """The whole net as one ``nn.Sequential``."""
        return nn.Sequential(self.stem, *self.blocks, self.tail)


def init_conv_net(module: nn.Module) -> nn.Module:
    """Standard ResNet init in place: Kaiming-normal (fan_out) convs, BN γ=1 β=0, linear bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            m.reset_parameters()
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


class WideBasicBlock(nn.Module):
    """Pre-activation wide basic block: BN-ReLU-conv3×3-BN-ReLU-(dropout)-conv3×3 plus shortcut.

    Args:
        in_planes: input channels.
        out_planes: output channels.
        stride: stride of the first conv (and of the 1×1 shortcut conv when shapes change).
        dropout: dropout probability between the convs (WRN default 0).
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(x))
        # The pre-activated input feeds the projection shortcut when shapes change (original WRN).
        skip = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(self.dropout(torch.relu(self.bn2(out))))
        return out + skip


class BottleneckBlock(nn.Module):
    """ResNet bottleneck: conv1×1-BN-ReLU-conv3×3(stride)-BN-ReLU-conv1×1-BN, add shortcut, ReLU.

    Args:
        in_planes: input channels.
        planes: bottleneck width; the output has ``planes * 4`` channels.
        stride: stride of the 3×3 conv (and of the projection shortcut).
    """

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != out:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return torch.relu(out + self.shortcut(x))


def wrn_stack(
    depth: int = 28, widen_factor: int = 10, num_classes: int = 100, in_channels: int = 3, dropout: float = 0.0
) -> BlockStack:
    """Wide ResNet-``depth``-``widen_factor`` for 32×32 inputs: (depth − 4)/6 blocks per group, 3 groups.

    WRN-28-10 gives 12 blocks with widths 160, 320, 640; the tail is BN-ReLU-global pool-linear.
    """
    if (depth - 4) % 6 != 0 or depth < 10:
        raise ValueError(f"WRN depth must be 6n + 4 with n >= 1, got {depth}")
    n = (depth - 4) // 6
    widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
    stem = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
    blocks: list[nn.Module] = []
    in_planes = widths[0]
    for group, stride in zip(range(3), (1, 2, 2)):
        for i in range(n):
            blocks.append(WideBasicBlock(in_planes, widths[group + 1], stride if i == 0 else 1, dropout))
            in_planes = widths[group + 1]
    tail = nn.Sequential(
        nn.BatchNorm2d(in_planes), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_planes, num_classes)
    )
    stack = BlockStack(stem, blocks, tail)
    init_conv_net(stack.as_module())
    return stack


def resnet_bottleneck_stack(
    layers: Sequence[int] = (3, 4, 6, 3), base_width: int = 64, num_classes: int = 1000, in_channels: int = 3
) -> BlockStack:
    """Bottleneck ResNet with ``layers`` blocks per stage; ``(3, 4, 6, 3)`` and width 64 is ResNet-50.

    Stem: conv7×7/2-BN-ReLU-maxpool3×3/2; stage widths ``base_width × (1, 2, 4, 8)``; tail:
    global pool-linear.
    """
    stem = nn.Sequential(
        nn.Conv2d(in_channels, base_width, 7, stride=2, padding=3, bias=False),
        nn.BatchNorm2d(base_width),
        nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1),
    )
    blocks: list[nn.Module] = []
    in_planes = base_width
    for stage, n_blocks in enumerate(layers):
        planes = base_width * 2**stage
        for i in range(n_blocks):
            blocks.append(BottleneckBlock(in_planes, planes, (1 if stage == 0 else 2) if i == 0 else 1))
            in_planes = planes * BottleneckBlock.expansion
    tail = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_planes, num_classes))
    stack = BlockStack(stem, blocks, tail)
    init_conv_net(stack.as_module())
    return stack


def split_stack(stack: BlockStack, blocks_in_head: int) -> tuple[nn.Sequential, nn.Sequential]:
    """(trunk, head): the head holds the last ``blocks_in_head`` blocks and the tail, the trunk the rest."""
    n = len(stack.blocks)
    if not 0 <= blocks_in_head <= n:
        raise ValueError(f"blocks_in_head must be in [0, {n}], got {blocks_in_head}")
    cut = n - blocks_in_head
    return nn.Sequential(stack.stem, *stack.blocks[:cut]), nn.Sequential(*stack.blocks[cut:], stack.tail)


def make_heads(factory: Callable[[], nn.Module], num_heads: int) -> nn.ModuleList:
    """H heads, each built by its own call of ``factory`` (so each is separately randomly initialised)."""
    if num_heads < 1:
        raise ValueError(f"num_heads must be >= 1, got {num_heads}")
    return nn.ModuleList(factory() for _ in range(num_heads))


def fresh_copy(module: nn.Module, init: Callable[[nn.Module], object] | None = None) -> nn.Module:
    """A deep copy of ``module``'s structure with every weight re-initialised (never the original values).

    Every submodule with ``reset_parameters`` is reset; ``init`` (e.g. :func:`init_conv_net`) runs after.
    """
    clone = copy.deepcopy(module)
    for m in clone.modules():
        reset = getattr(m, "reset_parameters", None)
        if callable(reset):
            reset()
    if init is not None:
        init(clone)
    return clone


class MultiHeadNet(nn.Module):
    """A shared trunk followed by H heads; ``forward`` returns the stacked logits ``[H, B, C]``.

    With an ``nn.Identity`` trunk and full nets as heads this is an ensemble of independent models.

    Args:
        trunk: the shared part (``nn.Identity`` for none).
        heads: the H heads.
    """

    def __init__(self, trunk: nn.Module, heads: nn.ModuleList) -> None:
        super().__init__()
        self.trunk = trunk
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.trunk(x)
        return torch.stack([head(h) for head in self.heads])
