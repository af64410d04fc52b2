"""Score networks and their layers."""

from .layers import CondInstanceNormPlusPlus
from .refinenet import CondRefineNetDilated

__all__ = ["CondInstanceNormPlusPlus", "CondRefineNetDilated"]
