"""StyleGAN2: our generator and discriminator, compatible with published checkpoints."""

from .networks import Discriminator, Generator, GeneratorConfig, channels_for

__all__ = ["Discriminator", "Generator", "GeneratorConfig", "channels_for"]
