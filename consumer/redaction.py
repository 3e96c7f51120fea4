"""Naming a subject in logs without naming them: a keyed hash of the scope, never the id.

The key (a random salt kept in the namespace's metadata) makes the hash useless for
guessing ids from a list, while the same scope always gets the same name, so an operator
can follow one subject's events through the logs and match them with `unlearn inspect`.
"""

from __future__ import annotations

import hashlib
import hmac


def scope_name(salt: bytes, user: str | None, item: str | None) -> str:
    """ "user:3fa2c81d09be", "item:...", "pair:...": the scope and a keyed hash of it."""
    scope = "pair" if user is not None and item is not None else "user" if user else "item"
    message = f"{user or ''}\x00{item or ''}".encode("utf-8", "surrogatepass")
    return f"{scope}:{hmac.new(salt, message, hashlib.sha256).hexdigest()[:12]}"
