"""Score networks and their layers."""

from .layers import CondInstanceNormPlusPlus, InstanceNormPlusPlus
from .ncsnpp import NCSNpp
from .ncsnv2 import NCSNv2, NCSNv2Deeper, NCSNv2Deepest
from .refinenet import CondRefineNetDilated

__all__ = [
    "CondInstanceNormPlusPlus",
    "CondRefineNetDilated",
    "InstanceNormPlusPlus",
    "NCSNpp",
    "NCSNv2",
    "NCSNv2Deeper",
    "NCSNv2Deepest",
]
