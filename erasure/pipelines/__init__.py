from .erased import ErasedPipeline, load_erasure
from .loading import load_pipeline, pick_device, set_attention_backend
from .one_step import OneStepScheduler

__all__ = ["ErasedPipeline", "load_erasure", "OneStepScheduler", "load_pipeline", "pick_device", "set_attention_backend"]
