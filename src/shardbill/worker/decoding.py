"""Record values to usage events: the JSON decoder the worker uses by default (pure).

:func:`json_decoder` reads one JSON object per record, with the fields of
:meth:`shardbill.rules.UsageEvent.from_dict`; numbers with a fraction are
read exactly (as ``Decimal``), a key given twice, ``NaN`` and values over
1 MiB are refused. Any callable ``bytes -> UsageEvent`` that raises
``ValueError`` for a bad value can replace it (``Worker(decoder=...)``).
"""

from __future__ import annotations

from decimal import Decimal

from shardbill._parsing import json_loads
from shardbill.rules import UsageEvent
from shardbill.worker.protocols import Decoder

__all__ = ["MAX_VALUE_BYTES", "json_decoder"]

MAX_VALUE_BYTES = 1024 * 1024
"""The largest record value the JSON decoder reads (1 MiB)."""


def json_decoder(*, account_as_int: bool = False) -> Decoder:
    """A decoder of one JSON event object per record.

    Args:
        account_as_int: parse a text ``account`` as an integer (for a
            ``bigint`` account column).

    Returns:
        The decoder; it raises ``ValueError`` (``InvalidInputError`` is one)
        saying what is wrong with a value.

    Example:
        >>> decode = json_decoder()
        >>> decode(b'{"event_id": "e-1", "account": 42, "product": "sms",'
        ...        b' "time": "2026-11-05T10:00:00Z", "quantity": 1}').account
        42
    """

    def decode(value: bytes) -> UsageEvent:
        if len(value) > MAX_VALUE_BYTES:
            raise ValueError(f"the record is {len(value)} bytes long; the limit is 1 MiB per event")
        try:
            data = json_loads(value, max_chars=MAX_VALUE_BYTES, parse_float=Decimal)
        except UnicodeDecodeError:
            raise ValueError("the record is not valid UTF-8 JSON") from None
        except ValueError as exc:
            raise ValueError(f"not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError(f"a record must be a JSON object, not {type(data).__name__}")
        try:
            return UsageEvent.from_dict(data, account_as_int=account_as_int)
        except TypeError as exc:  # MoneyTypeError and the like: still the value's fault
            raise ValueError(str(exc)) from exc

    return decode
