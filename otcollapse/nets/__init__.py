"""Networks: ResNets and their plain twins, feature capture as Trajectories, training, margins.

``nets`` imports only the foundation rooms (``_utils``, ``_validation``, ``_results``) and
:mod:`otcollapse.measures`: it produces Trajectories and never imports the analysis modules or
:mod:`otcollapse.data` (a caller runs the analyses from ``train``'s callbacks; any object with
tensors ``X`` and ``y`` is a data set here). :func:`otcollapse.nets.common.as_xy` is the one way
data become tensors.
"""

from otcollapse.nets.capture import capture, find_blocks, projection_matrix
from otcollapse.nets.margins import MarginResult, normalised_margins
from otcollapse.nets.resnet import (
    RESNET_LAYOUTS,
    BasicBlock,
    ConvResNet,
    MLPBlock,
    ResidualMLP,
    ResNet,
    resnet18_layout,
    resnet_layout,
)
from otcollapse.nets.train import CHECKPOINT_NAME, TrainHistory, load_checkpoint, train

__all__ = [
    "CHECKPOINT_NAME",
    "RESNET_LAYOUTS",
    "BasicBlock",
    "ConvResNet",
    "MLPBlock",
    "MarginResult",
    "ResNet",
    "ResidualMLP",
    "TrainHistory",
    "capture",
    "find_blocks",
    "load_checkpoint",
    "normalised_margins",
    "projection_matrix",
    "resnet18_layout",
    "resnet_layout",
    "train",
]
