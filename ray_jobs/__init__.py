"""Thin `ray job submit` entrypoints over the `bertvision` library (the library never imports Ray).

Each module here is one job's Ray plumbing (its configs, the work and the printing live in
`bertvision/`); what they share (the Ray they run on, a TorchTrainer, checkpoints, `main`) is in
`ray_jobs.common`.
"""
