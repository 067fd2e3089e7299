"""The keyed watermark of `stillroom serve --watermark-keys FILE`.

Every completion is generated through transformers' `WatermarkLogitsProcessor` (Kirchenbauer et al.
2023), seeded with the hashing key of the request's cohort in the key file's current epoch (see
`stillroom.guard.provenance.keys`). The gateway says which cohort a request belongs to in the
`X-Stillroom-Cohort` header, which it sets itself (a client's own header never passes the gateway);
a request without one is in cohort `direct`. The response carries `X-Stillroom-Watermark-Key`, the
key id (`e<epoch>/<cohort>`), which the gateway logs with the interaction: never the key itself.
The key file is read again when it changes (a rotation), checked at most once every few seconds.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from stillroom.guard.provenance.detect import watermark_processor
from stillroom.guard.provenance.keys import DEFAULT_COHORT, Keyring, WatermarkKey
from stillroom.serve.protocol import COHORT_HEADER, KEY_HEADER, BadRequest  # noqa: F401  (KEY_HEADER: re-exported)


class ServeWatermark:
    """Picks the watermark processor of a request from its cohort; processors are built once per key."""

    def __init__(self, keys: Path | str, vocab_size: int, recheck_s: float = 5.0):
        self.ring = Keyring(keys)
        self.vocab_size = vocab_size
        self.recheck_s = recheck_s
        self._checked = time.monotonic()
        self._processors: dict[str, object] = {}
        self._lock = threading.Lock()

    def key_for(self, headers) -> WatermarkKey:
        now = time.monotonic()
        if now - self._checked > self.recheck_s:
            self._checked = now
            if self.ring.reload_if_changed():
                self._processors.clear()
        cohort = headers.get(COHORT_HEADER) or DEFAULT_COHORT
        if "/" in cohort or len(cohort) > 64 or not cohort.isprintable():
            raise BadRequest(400, f"{COHORT_HEADER} must be 1 to 64 printable characters without '/'",
                             param=COHORT_HEADER, code="invalid_value")
        return self.ring.key(cohort)

    def processor(self, key: WatermarkKey):
        with self._lock:
            processor = self._processors.get(key.key_id)
            if processor is None:
                processor = self._processors[key.key_id] = watermark_processor(key, self.vocab_size)
                if len(self._processors) > 256:
                    self._processors.pop(next(iter(self._processors)))
            return processor
