"""iprm: implicit process reward models (Yuan et al. 2024, "Free Process Rewards without Process Labels").

An outcome reward parameterised as a log-likelihood ratio, r(y) = β·log π_θ(y|x)/π_ref(y|x), trained on
response-level labels, scores every step for free: q_k = β·Σ_{t ≤ end of step k} log π_θ/π_ref.
"""

__version__ = "0.1.0"
