"""Residual networks and their plain twins, written so that :func:`capture` can find their parts.

Every model here has the same three parts, as attributes:

- ``stem``: maps the input to the input of the first block (layer 0 of a trajectory);
- ``blocks``: an ``nn.ModuleList`` of the blocks, in forward order (also :meth:`block_modules`);
- ``head``: the ``nn.Linear`` classifier applied to the (pooled) output of the last block.

A residual block computes ``h_{l+1} = S h_l + f(h_l)`` with ``S`` the identity or, where the shape
changes, a 1x1-convolution shortcut ``P`` (He et al. 2016); the *plain twin* (``plain=True``) has
the same layers but no skip connection, ``h_{l+1} = f(h_l)`` — the comparison of Gai & Zhang.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from otcollapse._validation import check_int

__all__ = [
    "RESNET_LAYOUTS",
    "BasicBlock",
    "ConvResNet",
    "MLPBlock",
    "ResNet",
    "ResidualMLP",
    "resnet18_layout",
    "resnet_layout",
]

#: Blocks per stage of the CIFAR-style ResNets (He et al. 2016); widths ``w * (1, 2, 4, 8)``.
RESNET_LAYOUTS: dict[str, tuple[int, ...]] = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}


def _norm1d(width: int, batchnorm: bool) -> nn.Module:
    return nn.BatchNorm1d(width) if batchnorm else nn.Identity()


def _norm2d(width: int, batchnorm: bool) -> nn.Module:
    return nn.BatchNorm2d(width) if batchnorm else nn.Identity()


def _check_sizes(**sizes: int) -> None:
    """Each size a positive integer, or a TypeError / ValueError naming it."""
    for name, v in sizes.items():
        check_int(v, name, minimum=1)


def _conv_stem(in_channels: int, width: int, batchnorm: bool) -> nn.Module:
    """A 3x3 convolution to ``width`` channels, a normalisation and a ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, 1, 1, bias=not batchnorm),
        _norm2d(width, batchnorm),
        nn.ReLU(),
    )


class _BlockNet(nn.Module):
    """Shared forward: ``head(pool(blocks(stem(x))))``."""

    stem: nn.Module
    blocks: nn.ModuleList
    head: nn.Linear

    def block_modules(self) -> list[nn.Module]:
        """The blocks in forward order (their outputs are layers ``1..L`` of a trajectory)."""
        return list(self.blocks)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Output of the last block (before pooling and the head)."""
        h = self.stem(x)
        for block in self.blocks:
            h = block(h)
        return h

    def pool(self, h: torch.Tensor) -> torch.Tensor:
        """Global average pooling of feature maps; vectors pass unchanged."""
        return h.mean(dim=tuple(range(2, h.ndim))) if h.ndim > 2 else h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)))

    def _assemble(
        self, stem: nn.Module, blocks: Sequence[nn.Module], head: nn.Linear, plain: bool
    ) -> None:
        self.plain = plain
        self.stem = stem
        self.blocks = nn.ModuleList(blocks)
        self.head = head


class MLPBlock(nn.Module):
    """Fully connected residual block ``h + W_2 σ(N(W_1 h))`` (plain: ``W_2 σ(N(W_1 h))``).

    $$h_{l+1} = h_l + W_2\\,\\sigma(N(W_1 h_l + c_1)) + c_2$$

    with ``σ`` the ReLU and ``N`` a batch normalisation or the identity. There is no activation
    after the sum, so a block is a displacement ``h -> h + f(h)`` of its input in one space.
    """

    def __init__(self, width: int, *, plain: bool = False, batchnorm: bool = False) -> None:
        super().__init__()
        self.plain = plain
        self.fc1 = nn.Linear(width, width)
        self.norm = _norm1d(width, batchnorm)
        self.fc2 = nn.Linear(width, width)

    def residual(self, h: torch.Tensor) -> torch.Tensor:
        """The residual branch ``f(h)``."""
        return self.fc2(F.relu(self.norm(self.fc1(h))))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        f = self.residual(h)
        return f if self.plain else h + f


class ResidualMLP(_BlockNet):
    """Constant-width residual MLP: every block lives in ``R^width``.

    $$h_0 = \\sigma(N(A\\,\\mathrm{vec}(x) + a)), \\quad h_{l+1} = h_l + f_l(h_l), \\quad
    \\mathrm{logits} = W h_L + b$$

    The setting where the Wasserstein-geodesic view applies to every block (Gai & Zhang).

    Parameters
    ----------
    d_in : int
        Number of input features (inputs are flattened).
    width : int
    n_blocks : int
    n_classes : int
    plain : bool
        The plain twin: same layers, ``h_{l+1} = f_l(h_l)``.
    batchnorm : bool
        Batch normalisation in the stem and inside each block.

    Examples
    --------
    >>> net = ResidualMLP(64, 32, 4, 10)
    >>> net(torch.zeros(5, 1, 8, 8)).shape
    torch.Size([5, 10])

    References
    ----------
    K. He, X. Zhang, S. Ren, J. Sun, "Deep residual learning for image recognition", CVPR 2016.
    K. Gai, S. Zhang, "Deep residual networks learn the geodesic curve in the Wasserstein space".
    """

    def __init__(
        self,
        d_in: int,
        width: int,
        n_blocks: int,
        n_classes: int,
        *,
        plain: bool = False,
        batchnorm: bool = False,
    ) -> None:
        super().__init__()
        _check_sizes(d_in=d_in, width=width, n_blocks=n_blocks, n_classes=n_classes)
        stem = nn.Sequential(
            nn.Flatten(), nn.Linear(d_in, width), _norm1d(width, batchnorm), nn.ReLU()
        )
        blocks = [MLPBlock(width, plain=plain, batchnorm=batchnorm) for _ in range(n_blocks)]
        self._assemble(stem, blocks, nn.Linear(width, n_classes), plain)


class BasicBlock(nn.Module):
    """The BasicBlock of He et al. (2016): two 3x3 convolutions and a shortcut.

    $$h_{l+1} = \\sigma\\big(S h_l + N_2(C_2\\,\\sigma(N_1(C_1 h_l)))\\big)$$

    ``S`` is the identity when the shape is kept, else ``P`` = 1x1 convolution with the stride
    (and a batch normalisation), stored as ``self.shortcut``. The plain twin drops ``S h_l``.
    """

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        *,
        plain: bool = False,
        batchnorm: bool = True,
    ) -> None:
        super().__init__()
        self.plain = plain
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=not batchnorm)
        self.bn1 = _norm2d(planes, batchnorm)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=not batchnorm)
        self.bn2 = _norm2d(planes, batchnorm)
        self.shortcut: nn.Module | None
        if plain:
            self.shortcut = None
        elif stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=not batchnorm),
                _norm2d(planes, batchnorm),
            )
        else:
            self.shortcut = nn.Identity()

    def residual(self, h: torch.Tensor) -> torch.Tensor:
        """The residual branch ``f(h)`` (before the final ReLU)."""
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(h)))))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        f = self.residual(h)
        if self.shortcut is not None:
            f = f + self.shortcut(h)
        return F.relu(f)


class ConvResNet(_BlockNet):
    """Constant-width convolutional residual net without downsampling.

    A 3x3 stem to ``width`` channels, ``n_blocks`` BasicBlocks of stride 1 (all in one space,
    ``width x H x W``), global average pooling and a linear head.

    Parameters
    ----------
    in_channels, width, n_blocks, n_classes : int
    plain : bool
        The plain twin (no skip connections).
    batchnorm : bool

    References
    ----------
    K. He et al., CVPR 2016; K. Gai, S. Zhang (plain twins).
    """

    def __init__(
        self,
        in_channels: int,
        width: int,
        n_blocks: int,
        n_classes: int,
        *,
        plain: bool = False,
        batchnorm: bool = True,
    ) -> None:
        super().__init__()
        _check_sizes(in_channels=in_channels, width=width, n_blocks=n_blocks, n_classes=n_classes)
        stem = _conv_stem(in_channels, width, batchnorm)  # before the blocks: the seeded draws
        blocks = [
            BasicBlock(width, width, 1, plain=plain, batchnorm=batchnorm) for _ in range(n_blocks)
        ]
        self._assemble(stem, blocks, nn.Linear(width, n_classes), plain)


class ResNet(_BlockNet):
    """CIFAR-style ResNet (He et al. 2016) for any input channels and image size.

    A 3x3 stem to ``widths[0]`` channels, then stages ``s = 0..S-1`` of ``blocks_per_stage[s]``
    BasicBlocks of width ``widths[s]``; the first block of every stage after the first has stride
    2 and a 1x1-convolution shortcut ``P``. Global average pooling and a linear head. The blocks
    of all stages are listed in order in ``self.blocks``; ``self.stage_of[i]`` is block i's stage.

    Parameters
    ----------
    widths : sequence of int
        Channels per stage, e.g. ``(64, 128, 256, 512)``.
    blocks_per_stage : sequence of int
        Blocks per stage, e.g. ``(2, 2, 2, 2)`` (ResNet-18).
    in_channels : int
    n_classes : int
    plain : bool
        The plain twin: same layers without skip connections (and without ``P``).
    batchnorm : bool

    References
    ----------
    K. He, X. Zhang, S. Ren, J. Sun, "Deep residual learning for image recognition", CVPR 2016.
    """

    def __init__(
        self,
        widths: Sequence[int] = (64, 128, 256, 512),
        blocks_per_stage: Sequence[int] = (2, 2, 2, 2),
        *,
        in_channels: int = 3,
        n_classes: int = 10,
        plain: bool = False,
        batchnorm: bool = True,
    ) -> None:
        super().__init__()
        widths, blocks_per_stage = list(widths), list(blocks_per_stage)
        if not widths or len(widths) != len(blocks_per_stage):
            raise ValueError(
                f"widths {widths} and blocks_per_stage {blocks_per_stage} must be non-empty and "
                "of equal length (one entry per stage)."
            )
        if min(widths) < 1 or min(blocks_per_stage) < 1:
            raise ValueError("every stage needs a positive width and at least one block.")
        stem = _conv_stem(in_channels, widths[0], batchnorm)
        blocks: list[nn.Module] = []
        self.stage_of: list[int] = []
        in_planes = widths[0]
        for s, (w, nb) in enumerate(zip(widths, blocks_per_stage, strict=True)):
            for j in range(nb):
                stride = 2 if (s > 0 and j == 0) else 1
                blocks.append(BasicBlock(in_planes, w, stride, plain=plain, batchnorm=batchnorm))
                self.stage_of.append(s)
                in_planes = w
        self._assemble(stem, blocks, nn.Linear(in_planes, n_classes), plain)


def resnet_layout(
    name: str,
    *,
    in_channels: int = 3,
    n_classes: int = 10,
    width: int = 64,
    plain: bool = False,
    batchnorm: bool = True,
) -> ResNet:
    """ResNet-18 or ResNet-34 (CIFAR variant): widths ``width * (1, 2, 4, 8)``.

    ``name`` is a key of :data:`RESNET_LAYOUTS`: ``"resnet18"`` has ``(2, 2, 2, 2)`` BasicBlocks
    per stage, ``"resnet34"`` ``(3, 4, 6, 3)``. ``width`` is the base width (the first stage's
    channels; 64 in He et al.); the plain twin (``plain=True``) has the same stages.

    Raises
    ------
    ValueError
        An unknown ``name`` (the known ones are listed).

    Examples
    --------
    >>> net = resnet_layout("resnet34", width=4)
    >>> len(net.blocks), net.stage_of[:4], net.head.in_features
    (16, [0, 0, 0, 1], 32)

    References
    ----------
    K. He et al., "Deep residual learning for image recognition", CVPR 2016.
    """
    if name not in RESNET_LAYOUTS:
        raise ValueError(f"unknown ResNet layout {name!r}; use one of {list(RESNET_LAYOUTS)}.")
    _check_sizes(width=width)
    return ResNet(
        [width, 2 * width, 4 * width, 8 * width],
        RESNET_LAYOUTS[name],
        in_channels=in_channels,
        n_classes=n_classes,
        plain=plain,
        batchnorm=batchnorm,
    )


def resnet18_layout(
    *,
    in_channels: int = 3,
    n_classes: int = 10,
    width: int = 64,
    plain: bool = False,
    batchnorm: bool = True,
) -> ResNet:
    """ResNet-18 (CIFAR variant): widths ``width * (1, 2, 4, 8)``, two BasicBlocks per stage
    (``resnet_layout("resnet18", ...)``).

    References
    ----------
    K. He et al., "Deep residual learning for image recognition", CVPR 2016.
    """
    return resnet_layout(
        "resnet18",
        in_channels=in_channels,
        n_classes=n_classes,
        width=width,
        plain=plain,
        batchnorm=batchnorm,
    )
