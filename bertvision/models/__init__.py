"""Small heads trained on stored hidden states of every encoder layer.

`adapter_pooler` holds the AdapterPooler (the original study's LayerWeightShare model and its
ScalarMix variant). Import it from there; this package imports nothing, so it stays cheap.
"""
