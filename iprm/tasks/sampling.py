"""Sample responses from a world policy: `iprm.sampling.sample_responses` (exact length buckets, no padding).

Kept as the world's name for it; the sampler itself lives in `iprm.sampling`, below the tasks, so the tasks
never import `iprm.generation`.
"""

from iprm.sampling import sample_responses

__all__ = ["sample_responses"]
