"""StyleGAN2: our generator and discriminator, compatible with published checkpoints."""

from .checkpoints import CheckpointError, load_nvlabs_pickle, load_rosinality, read_nvlabs_pickle
from .networks import Discriminator, Generator, GeneratorConfig, channels_for

__all__ = [
    "CheckpointError",
    "Discriminator",
    "Generator",
    "GeneratorConfig",
    "channels_for",
    "load_nvlabs_pickle",
    "load_rosinality",
    "read_nvlabs_pickle",
]
