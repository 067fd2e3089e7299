"""What the training loop shows while it runs: a tqdm bar with a running loss, and a log line per evaluation."""

from __future__ import annotations

from tqdm.auto import tqdm

from stillroom.core.runs import LOG


class Progress:
    """The bar (on the main process only, when `enabled`) and the smoothed loss it shows."""

    def __init__(self, total: int, initial: int, desc: str, enabled: bool):
        self.desc = desc
        self.running: float | None = None
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True, leave=True,
                        disable=not enabled)

    def step(self, loss: float, epoch: float) -> None:
        self.running = loss if self.running is None else 0.95 * self.running + 0.05 * loss
        self.bar.update(1)
        self.bar.set_postfix(epoch=f"{epoch:.2f}", loss=f"{self.running:.4f}")

    def log(self, record: dict) -> None:
        LOG.info("%s: %s", self.desc, ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                for k, v in record.items()))

    def close(self) -> None:
        self.bar.close()
