"""The transformers backend of `generate`: `iprm.sampling.TransformersBackend` (batched `model.generate`).

It lives in `iprm.sampling` because the world builder and the baselines' labels sample with it too, and
neither may import `iprm.generation` (generation sits above the tasks it samples for).
"""

from iprm.sampling import DTYPES, TransformersBackend, load_model, resolve_device

__all__ = ["DTYPES", "TransformersBackend", "load_model", "resolve_device"]
