"""Networks: ResNets and their plain twins, feature capture as Trajectories, and training.

``nets`` imports only :mod:`otcollapse.measures` and :mod:`otcollapse._utils`: it produces
Trajectories and never imports the analysis modules (a caller runs those from ``train``'s
callbacks).
"""

from otcollapse.nets.capture import capture, find_blocks
from otcollapse.nets.resnet import (
    BasicBlock,
    ConvResNet,
    MLPBlock,
    ResidualMLP,
    ResNet,
    resnet18_layout,
)
from otcollapse.nets.train import CHECKPOINT_NAME, TrainHistory, load_checkpoint, train

__all__ = [
    "CHECKPOINT_NAME",
    "BasicBlock",
    "ConvResNet",
    "MLPBlock",
    "ResNet",
    "ResidualMLP",
    "TrainHistory",
    "capture",
    "find_blocks",
    "load_checkpoint",
    "resnet18_layout",
    "train",
]
