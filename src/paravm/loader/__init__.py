"""Guest images (ELF via pyelftools)."""

from . import cache
from .elf import Image, ImageError, Segment, read_image

__all__ = ["Image", "ImageError", "Segment", "read_image"]
