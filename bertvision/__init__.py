"""BERTVision: brief fine-tuning, every layer's hidden states stored once, small heads on top.

The library never imports Ray; `ray_jobs/` wraps its functions for `ray job submit`.
"""

__version__ = "0.1.0"
