"""AIGN: adversarial inverse graphics networks (``method=aign/<task>``)."""

from .config import AIGNConfig
from .method import AIGN

__all__ = ["AIGN", "AIGNConfig"]
