from .erased import ErasedPipeline

__all__ = ["ErasedPipeline"]
