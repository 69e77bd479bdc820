"""Thin `ray job submit` entrypoints over the `bertvision` library (the library never imports Ray).

Each module here loads a config, builds Ray objects and calls library functions; the work
itself lives in `bertvision/`. The first entrypoint, `ray_jobs.embed`, arrives with the
Ray Data extraction stage.
"""
