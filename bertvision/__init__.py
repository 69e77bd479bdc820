"""BERTVision: brief fine-tuning, every layer's hidden states stored once, small heads on top.

The library never imports Ray; `ray_jobs/` wraps its functions for `ray job submit`.
"""

__version__ = "0.1.0"


def load_model(run, model=None, seed=None, device=None):
    """The model a finished run chose, ready for ``.predict(rows)`` (`bertvision.predict.RunModel`)."""
    from bertvision.predict import load_model

    return load_model(run, model, seed, device)
