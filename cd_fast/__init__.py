"""cd_fast: performance-first reasoning-trace compression and distillation."""

from cd_fast.segment import SegmentConfig, segment_steps

__version__ = "0.1.0"

__all__ = ["SegmentConfig", "__version__", "segment_steps"]
