"""Samplers: the instruction order of each epoch, then batches of whole instruction groups across ranks;
the training DataLoader that resumes mid-epoch where it stopped; and consecutive batches of a sequential
set (evaluation, prediction) across ranks.

Whole groups, because the pairwise objectives pair responses *within* an instruction and KTO's reference
point pairs a prompt with another instruction's response. How ranks share the work and put it back
together: `iprm.distributed`.
"""

import math
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterator
from itertools import accumulate

import torch
from torch.utils.data import DataLoader, Sampler

# Length grouping sorts instructions within windows of this many batches: long enough to find similar
# lengths, short enough that the epoch's order stays random at larger scales.
LENGTH_WINDOW = 32


def balanced_cuts(sizes: list[int], parts: int, least: int = 1) -> list[range]:
    """Cut a sequence of items into `parts` consecutive runs of nearly equal total size, each of `least`
    items or more (`len(sizes) >= parts * least`): each cut is the one nearest to k/parts of the total."""
    cumulative, bounds = list(accumulate(sizes)), [0]
    for k in range(1, parts):
        target = cumulative[-1] * k / parts
        cut = bisect_left(cumulative, target) + 1  # the first cut whose left part reaches the target
        if cut >= 2 and target - cumulative[cut - 2] < cumulative[cut - 1] - target:
            cut -= 1
        bounds.append(min(max(cut, bounds[-1] + least), len(sizes) - (parts - k) * least))
    bounds.append(len(sizes))
    return [range(start, end) for start, end in zip(bounds, bounds[1:], strict=False)]


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

    A global batch holds `instructions_per_batch` × `num_replicas` instructions and rank r gets its r-th
    contiguous part, so R ranks train on the global batches of one process with R times the instructions
    per batch (the length windows and the batch order too), and the parts, concatenated in rank order, are
    that process's batch (`iprm.distributed`). Every rank gets one part of every global batch, hence the same
    number of batches (DDP hangs otherwise). A lone instruction left over at the end of an epoch joins the
    previous batch, so that every batch offers other instructions' responses for mismatched pairs; so does
    a last global batch too small to give every rank `min_instructions` (the one case where R ranks and
    one process batch differently: R·`min_instructions` > 2 and fewer are left over).

    Args:
        groups: Item indices of each instruction.
        instructions_per_batch: Instructions per batch on each rank.
        shuffle: Reshuffle the instruction order every epoch (seeded by `seed` and the epoch).
        seed: Seed of the instruction order.
        num_replicas: Number of ranks sharing the data.
        rank: This rank, in [0, num_replicas).
        lengths: With it, group instructions of similar length to waste little compute on padding: the
            epoch's order is cut into windows of `LENGTH_WINDOW` global batches, each window is sorted by
            this length (one number per instruction, e.g. its longest response), batched, and the batches
            of the epoch are shuffled (seeded). None: batches follow the shuffled order as is.
        min_instructions: The fewest instructions of a rank's batch: 2 where mismatched pairs cross
            instructions, else 1.
        tokens: Tokens of each instruction (all its records' prompts and responses); needed by
            `max_tokens`.
        max_tokens: Form batches by tokens instead of `instructions_per_batch`: the epoch's order is cut
            into ⌈total tokens / (R · max_tokens)⌉ global batches of nearly equal tokens, and each global
            batch into R parts of nearly equal tokens, so a rank's batch holds about `max_tokens` tokens
            (one instruction more at most). The count of batches is the same in every epoch, as
            Lightning's loop and learning-rate schedule expect.
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
        min_instructions: int = 1,
        tokens: list[int] | None = None,
        max_tokens: int | None = None,
    ):
        if not groups or not all(groups):
            raise ValueError("every instruction group must hold at least one item, and there must be one")
        if instructions_per_batch < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"bad sampler settings: {instructions_per_batch=}, {rank=}, {num_replicas=}")
        if len(groups) < num_replicas * min_instructions:
            raise ValueError(
                f"{len(groups)} instructions cannot be shared by {num_replicas} ranks, "
                f"{min_instructions} or more each"
            )
        self.groups = groups
        self.instructions_per_batch = instructions_per_batch
        self.num_replicas = num_replicas
        self.rank = rank
        if lengths is not None and len(lengths) != len(groups):
            raise ValueError(f"{len(lengths)} lengths for {len(groups)} instruction groups")
        self.lengths = lengths
        self.min_instructions = min_instructions
        if max_tokens is not None and (max_tokens < 1 or tokens is None or len(tokens) != len(groups)):
            raise ValueError(
                f"a token budget ({max_tokens=}) needs a positive budget and tokens per instruction"
            )
        self.tokens = tokens
        self.max_tokens = max_tokens
        # Lightning calls `set_epoch` on `dataloader.batch_sampler.sampler`, not on the batch sampler itself.
        self.sampler = InstructionSampler(len(groups), shuffle, seed)
        self.start = 0  # batches of the epoch the next iteration skips (a resumed epoch); then 0 again

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    @property
    def _smallest_last(self) -> int:
        """The fewest instructions a last global batch may hold rather than join the previous one."""
        lone = 2 if self.instructions_per_batch * self.num_replicas > 1 else 1
        return max(lone, self.num_replicas * self.min_instructions)

    @property
    def _token_batches(self) -> int:
        """The number of global batches under the token budget: the same in every epoch."""
        budget, least = self.max_tokens * self.num_replicas, self.num_replicas * self.min_instructions
        return max(1, min(math.ceil(sum(self.tokens) / budget), len(self.groups) // least))

    def _global_batches(self) -> list[list[int]]:
        order, size = list(self.sampler), self.instructions_per_batch * self.num_replicas
        if self.max_tokens is not None:
            size = math.ceil(len(order) / self._token_batches)  # the instructions of an average batch
        if self.lengths is not None:
            window = size * LENGTH_WINDOW
            order = [
                instruction
                for start in range(0, len(order), window)
                for instruction in sorted(order[start : start + window], key=self.lengths.__getitem__)
            ]
        if self.max_tokens is not None:
            sizes = [self.tokens[instruction] for instruction in order]
            least = self.num_replicas * self.min_instructions
            batches = [
                order[run.start : run.stop] for run in balanced_cuts(sizes, self._token_batches, least)
            ]
        else:
            batches = [order[start : start + size] for start in range(0, len(order), size)]
        if self.max_tokens is None and len(batches) > 1 and len(batches[-1]) < self._smallest_last:
            last = batches.pop()
            batches[-1] = batches[-1] + last
        if self.lengths is not None and self.sampler.shuffle:
            generator = torch.Generator().manual_seed(self.sampler.seed + self.sampler.epoch)
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        start, self.start = self.start, 0
        return self._parts(start)

    def _parts(self, start: int) -> Iterator[list[int]]:
        for instructions in self._global_batches()[start:]:
            count, ranks = len(instructions), self.num_replicas
            if self.max_tokens is not None:
                sizes = [self.tokens[instruction] for instruction in instructions]
                run = balanced_cuts(sizes, ranks, self.min_instructions)[self.rank]
                part = instructions[run.start : run.stop]
            else:
                part = instructions[count * self.rank // ranks : count * (self.rank + 1) // ranks]
            yield [item for instruction in part for item in self.groups[instruction]]

    def __len__(self) -> int:
        if self.max_tokens is not None:
            return self._token_batches
        count, size = len(self.groups), self.instructions_per_batch * self.num_replicas
        batches = math.ceil(count / size)
        return batches - (batches > 1 and count - (batches - 1) * size < self._smallest_last)


class ResumableDataLoader(DataLoader):
    """A DataLoader over an `InstructionBatchSampler` that resumes mid-epoch: a killed run resumed from a
    checkpoint trains on the rest of the interrupted epoch, in the same order, and on nothing twice.

    Its state is the epoch and how many of the epoch's batches training has taken. Lightning's fit loop saves
    the state of any training loader with `state_dict` / `load_state_dict` in its checkpoints and hands it
    back to the new loader when it resumes mid-epoch; the batch sampler then skips that many batches of the
    epoch's order, which depends on the seed and the epoch only. The loader cannot count what it yields,
    because Lightning fetches a batch ahead of the one it trains on (and workers further ahead): training
    calls `taken()` for each batch it takes (`PRMDataModule.on_before_batch_transfer`).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.batch_sampler, InstructionBatchSampler):
            raise TypeError("ResumableDataLoader needs an InstructionBatchSampler as its batch_sampler")
        self.batches_taken = 0

    def __iter__(self):
        self.batches_taken = self.batch_sampler.start  # the skipped batches were taken before the kill
        return super().__iter__()

    def taken(self) -> None:
        """Training took one more batch of this epoch."""
        self.batches_taken += 1

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.batch_sampler.epoch, "batches_taken": self.batches_taken}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.batch_sampler.set_epoch(state_dict["epoch"])
        self.batch_sampler.start = state_dict["batches_taken"]


class ShardedBatchSampler(Sampler[list[int]]):
    """Consecutive batches of a sequential set (a best-of-N set, a predict file), sharded across ranks.

    The set is cut into the batches one process forms, rows [j·b, (j + 1)·b); batch j goes to rank
    j mod `num_replicas`. The list wraps around so every rank gets the same number of batches: a rank short
    of one repeats an early batch, whose rows whoever gathers the results drops by row index
    (`iprm.distributed`).

    Args:
        size: Rows in the set.
        batch_size: Rows per batch.
        num_replicas: Number of ranks sharing the set.
        rank: This rank, in [0, num_replicas).
    """

    def __init__(self, size: int, batch_size: int, num_replicas: int = 1, rank: int = 0):
        if size < 1 or batch_size < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"bad sampler settings: {size=}, {batch_size=}, {rank=}, {num_replicas=}")
        self.size = size
        self.batch_size = batch_size
        self.num_replicas = num_replicas
        self.rank = rank

    def __iter__(self) -> Iterator[list[int]]:
        starts = range(0, self.size, self.batch_size)
        wrapped = [starts[j % len(starts)] for j in range(len(self) * self.num_replicas)]
        for start in wrapped[self.rank :: self.num_replicas]:
            yield list(range(start, min(start + self.batch_size, self.size)))

    def __len__(self) -> int:
        return math.ceil(math.ceil(self.size / self.batch_size) / self.num_replicas)


def instruction_tokens(items: list[dict], groups: list[int], collator, max_length: int | None) -> list[int]:
    """Tokens of each instruction's records (prompt as the model reads it, response, <eos>), truncated at
    `max_length`, for the token budget; in the order of `groups`."""
    tokens: dict[int, int] = defaultdict(int)
    texts = [collator.prompt(item["record"]) + item["record"].response for item in items]
    for item, ids in zip(items, collator.tokenizer(texts)["input_ids"], strict=True):
        tokens[item["group"]] += min(len(ids) + 1, max_length or len(ids) + 1)
    return [tokens[group] for group in groups]
