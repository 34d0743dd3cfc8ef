from .erased import ErasedPipeline
from .loading import load_pipeline, pick_device, set_attention_backend
from .one_step import OneStepScheduler

__all__ = ["ErasedPipeline", "OneStepScheduler", "load_pipeline", "pick_device", "set_attention_backend"]
