"""Samplers: the instruction order of each epoch, then batches of whole instruction groups across ranks.

Whole groups, because the pairwise objectives pair responses *within* an instruction and KTO's reference
point pairs a prompt with another instruction's response.
"""

import math
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

# Length grouping sorts instructions within windows of this many batches: long enough to find similar
# lengths, short enough that the epoch's order stays random at larger scales.
LENGTH_WINDOW = 32


class InstructionSampler(Sampler[int]):
    """The order of instructions in one epoch: a permutation seeded by (seed, epoch), or file order."""

    def __init__(self, num_instructions: int, shuffle: bool = True, seed: int = 0):
        self.num_instructions = num_instructions
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.num_instructions))
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.num_instructions, generator=generator).tolist())

    def __len__(self) -> int:
        return self.num_instructions


class InstructionBatchSampler(Sampler[list[int]]):
    """Batches of whole instruction groups, sharded across ranks.

    Each batch holds every item of `instructions_per_batch` instructions; a lone instruction left over at
    the end of an epoch joins the previous batch, so that every batch offers other instructions' responses
    for mismatched pairs. Batch j of the epoch goes to rank j mod num_replicas; the list wraps around so
    every rank gets the same number of batches (DDP hangs otherwise).

    Args:
        groups: Item indices of each instruction.
        instructions_per_batch: Instructions per batch on each rank.
        shuffle: Reshuffle the instruction order every epoch (seeded by `seed` and the epoch).
        seed: Seed of the instruction order.
        num_replicas: Number of ranks sharing the data.
        rank: This rank, in [0, num_replicas).
        lengths: With it, group instructions of similar length to waste little compute on padding: the
            epoch's order is cut into windows of `LENGTH_WINDOW` batches, each window is sorted by this
            length (one number per instruction, e.g. its longest response), batched, and the batches of
            the epoch are shuffled (seeded). None: batches follow the shuffled order as is.
    """

    def __init__(
        self,
        groups: list[list[int]],
        instructions_per_batch: int,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        lengths: list[int] | None = None,
    ):
        if not groups or not all(groups):
            raise ValueError("every instruction group must hold at least one item, and there must be one")
        if instructions_per_batch < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"bad sampler settings: {instructions_per_batch=}, {rank=}, {num_replicas=}")
        self.groups = groups
        self.instructions_per_batch = instructions_per_batch
        self.num_replicas = num_replicas
        self.rank = rank
        if lengths is not None and len(lengths) != len(groups):
            raise ValueError(f"{len(lengths)} lengths for {len(groups)} instruction groups")
        self.lengths = lengths
        # Lightning calls `set_epoch` on `dataloader.batch_sampler.sampler`, not on the batch sampler itself.
        self.sampler = InstructionSampler(len(groups), shuffle, seed)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def _instruction_batches(self) -> list[list[int]]:
        order, size = list(self.sampler), self.instructions_per_batch
        if self.lengths is not None:
            window = size * LENGTH_WINDOW
            order = [
                instruction
                for start in range(0, len(order), window)
                for instruction in sorted(order[start : start + window], key=self.lengths.__getitem__)
            ]
        batches = [order[start : start + size] for start in range(0, len(order), size)]
        if size > 1 and len(batches) > 1 and len(batches[-1]) == 1:
            lone = batches.pop()
            batches[-1] = batches[-1] + lone
        if self.lengths is not None and self.sampler.shuffle:
            generator = torch.Generator().manual_seed(self.sampler.seed + self.sampler.epoch)
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._instruction_batches()
        wrapped = [batches[j % len(batches)] for j in range(len(self) * self.num_replicas)]
        for instructions in wrapped[self.rank :: self.num_replicas]:
            yield [item for instruction in instructions for item in self.groups[instruction]]

    def __len__(self) -> int:
        count, size = len(self.groups), self.instructions_per_batch
        batches = math.ceil(count / size) - (size > 1 and count > size and count % size == 1)
        return math.ceil(batches / self.num_replicas)
