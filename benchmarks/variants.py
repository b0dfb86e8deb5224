"""Variants of `ImplicitPRM` that switch one optimisation off, for measuring what it buys. The switches exist
only to be measured, so they live here, not in the module; `tests/test_speedups.py` proves that each gives
the default's numbers.

    EachPair          pairwise objectives forward each (correct, incorrect) pair's two responses, as the
                      official DPO code and TRL do: a response is forwarded once per pair it joins
    FullLogits        the model's full forward and a float32 log-softmax at every position, instead of the
                      LM head on response positions only
    NoReferenceCache  the reference runs on every batch, its log-probs never kept
    EveryRowScored    every row of an evaluation batch forwarded, repeated candidates too
"""

import torch

from iprm import rewards
from iprm.data.collate import select_rows
from iprm.scorers import ImplicitPRM

__all__ = ["ImplicitPRM", "EachPair", "FullLogits", "NoReferenceCache", "EveryRowScored", "pair_by_pair"]
from iprm.objectives import pair_mask
from iprm.refcache import ReferenceCache


def pair_by_pair(batch: dict) -> dict:
    """The batch as the official DPO code forwards it: for each (correct, incorrect) pair of an instruction,
    its chosen and its rejected response, each pair its own group. A response appears once per pair it
    joins; the pairwise losses over the result equal those over the original batch."""
    pairs = pair_mask(batch["labels"], batch["groups"]).nonzero()
    out = select_rows(batch, torch.cat([pairs[:, 0], pairs[:, 1]]))
    count = len(pairs)
    out["labels"] = torch.cat([torch.ones(count), torch.zeros(count)]).to(batch["labels"])
    out["groups"] = torch.arange(count, device=pairs.device).repeat(2)
    return out


class EachPair(ImplicitPRM):
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return super().training_step(pair_by_pair(batch) if self.objective.pairwise else batch, batch_idx)


class FullLogits(ImplicitPRM):
    def _logprobs(self, model, batch: dict, prefix: str = "") -> torch.Tensor:
        ids, mask, response = (
            batch[f"{prefix}{key}"] for key in ("input_ids", "attention_mask", "response_mask")
        )
        return rewards.token_logprobs(model, ids, mask, response, response_only=False)


class _Forgetful(ReferenceCache):
    def put(self, key: str, value: torch.Tensor) -> None:
        pass


class NoReferenceCache(ImplicitPRM):
    def configure_model(self) -> None:
        super().configure_model()
        self.frozen_reference.cache = _Forgetful()


class EveryRowScored(ImplicitPRM):
    @torch.no_grad()
    def score(self, batch: dict) -> dict:
        return self._aggregate(self.step_scores(batch))
