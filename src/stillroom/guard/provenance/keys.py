"""Watermark keys per account cohort, with rotation: one secret per epoch, one hashing key per (epoch, cohort).

The key file (JSON, mode 0600) holds the watermark settings and, for every epoch, a random 32-byte
secret. The hashing key that transformers' `WatermarkLogitsProcessor` seeds its green lists with is

    hashing_key(epoch, cohort) = 1 + int(HMAC-SHA256(secret_epoch, "stillroom-watermark/" + cohort)[:6]) 

(48 bits, so `hashing_key * token` stays a valid 64-bit seed). A cohort's key therefore cannot be
derived without the epoch secret, and one cohort's key says nothing about another's. Everything that
leaves the serving process (response headers, the gateway log, alerts) carries only the *key id*
`e<epoch>/<cohort>`, never a key or a secret. Rotation adds an epoch; old epochs stay in the file
(retired), so text served under them can still be tested.

Accounts are put in cohorts by the gateway: explicitly (`keys add --cohort`), or by a keyed hash of the
account name into `cohorts` buckets, so an attacker cannot choose or predict its cohort.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from stillroom.core.errors import DataError

KEY_ID_PREFIX = "e"
DEFAULT_COHORT = "direct"
"""The cohort of requests that reach `stillroom serve` without a gateway in front (no cohort header)."""


@dataclass(frozen=True)
class WatermarkSettings:
    """The Kirchenbauer et al. (2023) green-list watermark, as transformers' `WatermarkingConfig` names it.

    `greenlist_ratio` is γ, the share of the vocabulary that is green after each context; `bias` is δ,
    added to the green tokens' logits. `seeding_scheme` "lefthash" seeds the green list from the previous
    token (Algorithm 2 of the paper); "selfhash" from the context and the candidate (Algorithm 3, slower).
    """

    greenlist_ratio: float = 0.25
    bias: float = 2.0
    seeding_scheme: str = "lefthash"
    context_width: int = 1

    def __post_init__(self):
        if not 0.0 < self.greenlist_ratio < 1.0:
            raise DataError(f"greenlist_ratio is {self.greenlist_ratio}; it must be between 0 and 1, exclusive",
                            where="watermark.greenlist_ratio")
        if self.bias < 0:
            raise DataError(f"bias is {self.bias}; it must be >= 0", where="watermark.bias")
        if self.seeding_scheme not in ("lefthash", "selfhash"):
            raise DataError(f"seeding_scheme {self.seeding_scheme!r} is not lefthash or selfhash",
                            where="watermark.seeding_scheme")
        if self.context_width < 1:
            raise DataError("context_width must be >= 1", where="watermark.context_width")


@dataclass(frozen=True)
class WatermarkKey:
    """One key: its id (safe to log), its epoch and cohort, and the hashing key (secret; never logged)."""

    key_id: str
    epoch: int
    cohort: str
    hashing_key: int
    settings: WatermarkSettings
    fingerprint: str = ""
    """A keyed hash of the key (HMAC of the epoch secret), safe to log: it names this exact key material, so an
    alert can be checked against the key file, and says nothing of the key itself (48 bits, too few to publish
    a plain hash of)."""

    def __repr__(self) -> str:  # keep the secret out of logs and tracebacks
        return f"WatermarkKey({self.key_id!r})"


def key_id(epoch: int, cohort: str) -> str:
    return f"{KEY_ID_PREFIX}{epoch}/{cohort}"


def parse_key_id(value: str) -> tuple[int, str]:
    head, sep, cohort = value.partition("/")
    if not sep or not head.startswith(KEY_ID_PREFIX) or not head[1:].isdigit() or not cohort:
        raise DataError(f"{value!r} is not a watermark key id", hint="key ids look like e0/c3 (epoch 0, cohort c3)")
    return int(head[1:]), cohort


class Keyring:
    """The watermark key file: settings, epoch secrets, and how accounts fall into cohorts."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._data: dict[str, Any] = {}
        self.mtime = 0.0
        self.load()

    @classmethod
    def create(cls, path: Path | str, settings: WatermarkSettings = WatermarkSettings(), cohorts: int = 8) -> "Keyring":
        path = Path(path)
        if path.exists():
            raise DataError("the watermark key file exists already", where=str(path),
                            hint="rotate its key with `stillroom guard provenance keys rotate`, or choose another file")
        if cohorts < 1:
            raise DataError("cohorts must be >= 1", where="--cohorts")
        data = {"version": 1, "settings": asdict(settings), "cohorts": cohorts, "assign_salt": secrets.token_hex(16),
                "epochs": [{"epoch": 0, "secret": secrets.token_hex(32), "created": time.time(), "retired": None}]}
        _write_private(path, data)
        return cls(path)

    def load(self) -> None:
        if not self.path.is_file():
            raise DataError("no such watermark key file", where=str(self.path),
                            hint="make one with `stillroom guard provenance keys init FILE`")
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            WatermarkSettings(**data["settings"])
            epochs = data["epochs"]
            if not isinstance(epochs, list) or not epochs:
                raise TypeError("epochs must be a non-empty list")
            for i, entry in enumerate(epochs):
                if not isinstance(entry.get("epoch"), int) or len(bytes.fromhex(entry["secret"])) < 16:
                    raise TypeError(f"epoch entry {i} needs an integer 'epoch' and a hex 'secret' of >= 16 bytes")
            int(data["cohorts"])
            str(data["assign_salt"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DataError(f"not a watermark key file ({exc})", where=str(self.path),
                            hint="make one with `stillroom guard provenance keys init FILE`") from None
        self._data = data
        self.mtime = self.path.stat().st_mtime

    def reload_if_changed(self) -> bool:
        try:
            changed = self.path.stat().st_mtime != self.mtime
        except OSError:
            return False
        if changed:
            self.load()
        return changed

    # ---- the file's content --------------------------------------------------------
    @property
    def settings(self) -> WatermarkSettings:
        return WatermarkSettings(**self._data["settings"])

    @property
    def cohorts(self) -> int:
        return int(self._data["cohorts"])

    @property
    def epochs(self) -> list[int]:
        return [int(e["epoch"]) for e in self._data["epochs"]]

    @property
    def current_epoch(self) -> int:
        live = [int(e["epoch"]) for e in self._data["epochs"] if not e.get("retired")]
        return max(live) if live else max(self.epochs)

    def cohort_names(self) -> list[str]:
        return [f"c{i}" for i in range(self.cohorts)]

    def cohort_of(self, account: str) -> str:
        """The cohort an account falls into when none is set for it: a keyed hash of its name."""
        digest = hmac.new(bytes.fromhex(self._data["assign_salt"]), account.encode("utf-8"), hashlib.sha256).digest()
        return f"c{int.from_bytes(digest[:8], 'big') % self.cohorts}"

    def rotate(self) -> int:
        """Start a new epoch (new secret); the previous epochs are retired but kept, so old text stays testable."""
        now = time.time()
        for entry in self._data["epochs"]:
            entry["retired"] = entry.get("retired") or now
        epoch = max(self.epochs) + 1
        self._data["epochs"].append({"epoch": epoch, "secret": secrets.token_hex(32), "created": now, "retired": None})
        _write_private(self.path, self._data)
        self.mtime = self.path.stat().st_mtime
        return epoch

    # ---- keys ----------------------------------------------------------------------
    def key(self, cohort: str, epoch: int | None = None) -> WatermarkKey:
        epoch = self.current_epoch if epoch is None else epoch
        entry = next((e for e in self._data["epochs"] if int(e["epoch"]) == epoch), None)
        if entry is None:
            raise DataError(f"the key file has no epoch {epoch} (it has {self.epochs})", where=str(self.path))
        if not cohort or "/" in cohort or len(cohort) > 64:
            raise DataError(f"cohort {cohort!r} must be 1 to 64 characters without '/'", where="cohort")
        secret = bytes.fromhex(entry["secret"])
        mac = hmac.new(secret, f"stillroom-watermark/{cohort}".encode("utf-8"), hashlib.sha256)
        fingerprint = hmac.new(secret, f"stillroom-watermark-fingerprint/{cohort}".encode("utf-8"),
                               hashlib.sha256).hexdigest()[:16]
        return WatermarkKey(key_id(epoch, cohort), epoch, cohort, 1 + int.from_bytes(mac.digest()[:6], "big"),
                            self.settings, fingerprint)

    def by_id(self, value: str) -> WatermarkKey:
        epoch, cohort = parse_key_id(value)
        return self.key(cohort, epoch)

    def all_keys(self, cohorts: list[str] | None = None, epochs: list[int] | None = None) -> list[WatermarkKey]:
        """Every (epoch, cohort) key: the candidates a provenance test corrects for."""
        cohorts = cohorts or self.cohort_names()
        return [self.key(c, e) for e in (epochs or self.epochs) for c in cohorts]


def _write_private(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
