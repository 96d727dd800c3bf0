"""Pseudonymous user ids on output topics: a keyed hash, reversible only inside the worker."""

from __future__ import annotations

import hashlib
import hmac
from collections import OrderedDict

#: Pseudonyms remembered to map a pseudonymous training example back to its user.
REMEMBERED = 1_000_000


class Pseudonymizer:
    """HMAC-SHA256 of user ids with a secret key; the identity when no key is set.

    Examples
    --------
    >>> Pseudonymizer("")("u1")
    'u1'
    >>> hidden = Pseudonymizer("secret")
    >>> pseudonym = hidden("u1")
    >>> len(pseudonym), pseudonym == hidden("u1"), hidden.real_id(pseudonym)
    (32, True, 'u1')
    """

    def __init__(self, key: str) -> None:
        self.key = key.encode()
        self.real: OrderedDict[str, str] = OrderedDict()

    @property
    def enabled(self) -> bool:
        """Whether ids are replaced."""
        return bool(self.key)

    def __call__(self, user_id: str) -> str:
        if not self.key:
            return user_id
        pseudonym = hmac.new(self.key, user_id.encode(), hashlib.sha256).hexdigest()[:32]
        self.real[pseudonym] = user_id
        self.real.move_to_end(pseudonym)
        if len(self.real) > REMEMBERED:
            self.real.popitem(last=False)
        return pseudonym

    def real_id(self, user_id: str) -> str:
        """The user behind a pseudonym this worker issued (else ``user_id`` unchanged)."""
        return self.real.get(user_id, user_id)
