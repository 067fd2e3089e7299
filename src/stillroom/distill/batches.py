"""The classifier's batch source for the training loop: seeded epochs of length-grouped batches, split across processes.

The epoch order is a seeded permutation, so a step number is a position in an
epoch and a checkpoint can resume mid-epoch; with augmented views, each epoch
draws afresh which version of each example is shown, and the teacher signal
gets the same rows, so it scores the view the student sees.
"""

from __future__ import annotations

import math

import torch

from stillroom.distill.types import Encoded


class Batches:
    """The batches of a classifier data set, epoch by epoch, as `index` lists into `data`.

    With `views` > 0, `data` holds `views + 1` versions of each of `examples` texts
    (row `v * examples + i` is version v of example i; version 0 is the text as
    given), and every epoch draws afresh which version of each example is shown.
    A teacher signal gets the same rows, so it scores the view the student sees.
    """

    def __init__(self, data: Encoded, batch_size: int, seed: int, views: int = 0):
        if len(data) % (views + 1):
            raise ValueError(f"{len(data)} rows are not {views + 1} versions of each example")
        self.data, self.batch_size, self.seed, self.views = data, batch_size, seed, views
        self.examples = len(data) // (views + 1)
        self.lengths = [len(ids) for ids in data.input_ids[:self.examples]]
        self.steps_per_epoch = math.ceil(self.examples / batch_size)
        self._epoch, self._batches = -1, []

    def __len__(self) -> int:
        return self.examples

    def batch(self, epoch: int, position: int, rank: int = 0, world: int = 1) -> dict[str, torch.Tensor]:
        if epoch != self._epoch:
            self._epoch, self._batches = epoch, epoch_batches(self.lengths, self.batch_size, self.seed, epoch)
            if self.views:
                generator = torch.Generator().manual_seed(self.seed * 7_919 + epoch)
                self._version = torch.randint(0, self.views + 1, (self.examples,), generator=generator)
        chosen = process_share(self._batches[position], rank, world)
        if self.views:
            chosen = self._version[chosen] * self.examples + chosen
        return self.data.batch(chosen)


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int, window: int = 50) -> list[torch.Tensor]:
    """The batches of one epoch: a seeded shuffle, grouped by length, in a seeded order.

    Examples are sorted by length within windows of `window` batches, so a
    batch pads to a similar length (about half the padding of random batches);
    the windows and the batch order stay random. The same seed and epoch always
    give the same batches, so a step number is a position in the epoch.
    """
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(len(lengths), generator=generator).tolist()
    batches = []
    span = batch_size * window
    for start in range(0, len(order), span):
        chunk = sorted(order[start:start + span], key=lambda i: lengths[i])
        batches += [torch.tensor(chunk[i:i + batch_size]) for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def process_share(global_batch: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """This process's part of a global batch. A last batch smaller than the number of processes is
    repeated until each process has an example, so none is left without one (which would stall the others)."""
    if world == 1:
        return global_batch
    if len(global_batch) < world:
        global_batch = global_batch.repeat(world)[:world]
    return global_batch[rank::world]
