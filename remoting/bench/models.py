"""The CNNs of the Radium paper's benchmark, in PyTorch, as `tf_cnn_benchmarks` builds them
for CIFAR-10 (../shared/notes/cnn-benchmark.md; parameter counts in cases.PARAMETERS).

- AlexNet, CIFAR variant: conv 5×5×64 + ReLU, max-pool 3×3/2 SAME, LRN, conv 5×5×64 + ReLU,
  LRN, max-pool 3×3/2 SAME, dense 384, 192, 11.  No batch norm, no dropout.
- ResNet-(6n+2), v1 and v2: basic blocks in three stages of 16/32/64 filters at 32/16/8
  pixels, n a stage; bias-free 3×3 convolutions; shortcut "option A" (identity, or a stride-2
  subsample with the new channels zero-padded equally on both sides); global average pool,
  dense 64 → 11.  v1: stem conv + BN; block conv-BN-ReLU-conv-BN, add, ReLU.  v2: stem conv +
  BN + ReLU; block BN(0.999, 1e-3, no scale)-ReLU-conv-BN(0.9, 1e-5)-ReLU-conv, add; after the
  last block BN(0.999, 1e-3, no scale) + ReLU.

TensorFlow's batch-norm "decay" d is PyTorch's momentum 1 - d; "no scale" keeps the learned
shift only.  CIFAR-10 is declared with 11 classes there: the head is 11 wide.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

CLASSES = 11


def _same_max_pool(x: torch.Tensor) -> torch.Tensor:
    """TensorFlow's 3×3/2 SAME max-pool: the one padded row and column at the end."""
    return F.max_pool2d(F.pad(x, (0, 1, 0, 1), value=float("-inf")), 3, 2)


class AlexNetCifar(nn.Module):
    def __init__(self, classes: int = CLASSES) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 5, 1, 2)
        self.conv2 = nn.Conv2d(64, 64, 5, 1, 2)
        self.lrn = nn.LocalResponseNorm(size=9, alpha=0.001, beta=0.75, k=1.0)  # TF: radius 4, 0.001/9
        self.fc1, self.fc2, self.fc3 = nn.Linear(4096, 384), nn.Linear(384, 192), nn.Linear(192, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.lrn(_same_max_pool(F.relu(self.conv1(x))))
        x = _same_max_pool(self.lrn(F.relu(self.conv2(x))))
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc3(F.relu(self.fc2(x)))


class ShiftOnlyBatchNorm(nn.BatchNorm2d):
    """TensorFlow's batch norm with scale=False: normalised, then a learned shift only."""

    def __init__(self, channels: int, eps: float = 1e-3, momentum: float = 0.001) -> None:
        super().__init__(channels, eps=eps, momentum=momentum, affine=False)
        self.shift = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + self.shift.view(1, -1, 1, 1)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-5, momentum=0.1)  # decay 0.9, with scale


def _shortcut(x: torch.Tensor, stride: int, pad: int) -> torch.Tensor:
    if stride == 1 and pad == 0:
        return x
    x = x[:, :, ::stride, ::stride]  # a 1×1 stride-2 average pool is a subsample
    return F.pad(x, (0, 0, 0, 0, pad, pad))  # zero channels on both sides


class BlockV1(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), _bn(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), _bn(cout)
        self.stride, self.pad = stride, (cout - cin) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + _shortcut(x, self.stride, self.pad))


class BlockV2(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = ShiftOnlyBatchNorm(cin)
        self.conv1, self.bn2 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), _bn(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.stride, self.pad = stride, (cout - cin) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return out + _shortcut(x, self.stride, self.pad)


class ResNetCifar(nn.Module):
    """ResNet-(6n+2) for 32×32 images, v1 or v2; n = 3, 5, 9, 18 give 20, 32, 56, 110."""

    def __init__(self, n: int, version: int, classes: int = CLASSES) -> None:
        super().__init__()
        self.version = version
        self.conv, self.bn = nn.Conv2d(3, 16, 3, 1, 1, bias=False), _bn(16)
        block = BlockV1 if version == 1 else BlockV2
        blocks: list[nn.Module] = []
        cin = 16
        for stage, cout in enumerate((16, 32, 64)):
            for i in range(n):
                blocks.append(block(cin, cout, 2 if stage > 0 and i == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.post = ShiftOnlyBatchNorm(64) if version == 2 else None
        self.fc = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        if self.version == 2:
            x = F.relu(x)  # v1 has no ReLU after its stem
        x = self.blocks(x)
        if self.post is not None:
            x = F.relu(self.post(x))
        return self.fc(x.mean(dim=(2, 3)))


def build(name: str) -> nn.Module:
    """The model called `name` (one of cases.PARAMETERS)."""
    if name == "alexnet":
        return AlexNetCifar()
    depth, _, version = name.removeprefix("resnet").partition("_")
    n = (int(depth) - 2) // 6
    return ResNetCifar(n, 2 if version == "v2" else 1)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
