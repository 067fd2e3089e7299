"""API keys and the accounts they belong to, stored hashed: HMAC-SHA256 of the key with the file's secret salt.

The key file (JSON) never holds a key itself, only `hmac(salt, key)`, the account, a short prefix to
tell keys apart, and what the provider knows of the account (organisation, payment fingerprint,
country), which goes into every logged interaction. A new key is shown once, when it is made.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stillroom.core.errors import DataError

KEY_PREFIX = "sk-sr-"
ADMIN_PREFIX = "sk-sr-admin-"


@dataclass(frozen=True)
class Account:
    account: str
    org: str = ""
    payment: str = ""
    country: str = ""
    cohort: str = ""  # watermark cohort set for this account; "" means the keyed-hash default (KeyStore.cohort_of)


class KeyStore:
    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._by_digest: dict[str, Account] = {}
        self._admin: set[str] = set()
        self._data: dict[str, Any] = {}
        self.load()

    # ---- file -------------------------------------------------------------------
    def load(self) -> None:
        if not self.path.exists():
            self._data = {"version": 1, "salt": secrets.token_hex(32), "keys": [], "admin": []}
        else:
            try:
                self._data = json.loads(self.path.read_text(encoding="utf-8"))
                salt = self._data["salt"]
                keys = self._data["keys"]
                admin = self._data.get("admin", [])
                if not isinstance(salt, str) or not isinstance(keys, list):
                    raise TypeError("salt must be text and keys a list")
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DataError(f"not a gateway key file ({exc})", where=str(self.path),
                                hint="make one with `stillroom guard gateway keys add ACCOUNT --keys FILE`") from None
            for i, entry in enumerate(keys):
                if not isinstance(entry, dict) or "digest" not in entry or "account" not in entry:
                    raise DataError(f"key entry {i} needs 'digest' and 'account'", where=str(self.path))
            self._data["admin"] = admin
        self._by_digest = {k["digest"]: Account(k["account"], k.get("org", ""), k.get("payment", ""), k.get("country", ""),
                                                k.get("cohort", ""))
                           for k in self._data["keys"] if not k.get("revoked")}
        self._admin = {a["digest"] for a in self._data["admin"] if not a.get("revoked")}

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(self._data, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    # ---- keys -------------------------------------------------------------------
    def digest(self, key: str) -> str:
        return hmac.new(bytes.fromhex(self._data["salt"]), key.encode("utf-8"), hashlib.sha256).hexdigest()

    def add(self, account: str, *, org: str = "", payment: str = "", country: str = "", key: str | None = None,
            save: bool = True, cohort: str = "") -> str:
        """Make a key for `account` and return it (the only time it is shown)."""
        if not account or len(account) > 200:
            raise DataError("an account name must be 1 to 200 characters")
        if "/" in cohort or len(cohort) > 64:
            raise DataError(f"cohort {cohort!r} must be at most 64 characters without '/'", where="--cohort")
        key = key or KEY_PREFIX + secrets.token_urlsafe(24)
        self._data["keys"].append({"digest": self.digest(key), "account": account, "prefix": key[:10], "org": org,
                                   "payment": payment, "country": country, "cohort": cohort, "created": time.time()})
        self._by_digest[self.digest(key)] = Account(account, org, payment, country, cohort)
        if save:
            self.save()
        return key

    def add_admin(self, key: str | None = None, save: bool = True) -> str:
        key = key or ADMIN_PREFIX + secrets.token_urlsafe(24)
        self._data["admin"].append({"digest": self.digest(key), "prefix": key[:14], "created": time.time()})
        self._admin.add(self.digest(key))
        if save:
            self.save()
        return key

    def revoke(self, account: str) -> int:
        n = 0
        for entry in self._data["keys"]:
            if entry["account"] == account and not entry.get("revoked"):
                entry["revoked"] = time.time()
                n += 1
        self.save()
        self.load()
        return n

    def lookup(self, key: str) -> Account | None:
        return self._by_digest.get(self.digest(key))

    def cohort_of(self, who: Account, cohorts: int) -> str:
        """The account's watermark cohort: the one set for it, else c0..c{cohorts-1} by a keyed hash of its name
        (the file's secret salt), so an account cannot pick or predict its cohort."""
        if who.cohort:
            return who.cohort
        mac = hmac.new(bytes.fromhex(self._data["salt"]), f"cohort/{who.account}".encode("utf-8"), hashlib.sha256)
        return f"c{int.from_bytes(mac.digest()[:8], 'big') % max(1, cohorts)}"

    def is_admin(self, key: str) -> bool:
        return self.digest(key) in self._admin  # digests, not keys, are compared

    @property
    def accounts(self) -> int:
        return len({a.account for a in self._by_digest.values()})

    @property
    def has_admin(self) -> bool:
        return bool(self._admin)


def bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None
