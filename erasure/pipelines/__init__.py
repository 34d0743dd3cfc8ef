from .erased import ErasedPipeline
from .one_step import OneStepScheduler

__all__ = ["ErasedPipeline", "OneStepScheduler"]
