"""erasure: remove a concept from a text-to-image diffusion model, prove it gone, ship the result."""
__version__ = "0.1.0"
