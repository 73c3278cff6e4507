"""Streaming generation: sampling, stop strings, and the decode loop over a KV cache."""
from .engine import ContextOverflowError, Engine, GenerationStream
from .scheduler import Scheduler, ScheduledStream
from .sampling import SamplingParams, sample
from .stopping import StopStringHoldback
from .stream import TextStream

__all__ = ["ContextOverflowError", "Engine", "GenerationStream", "SamplingParams", "ScheduledStream", "Scheduler",
           "StopStringHoldback", "TextStream", "sample"]
