"""The event shown in docs/howto/run-workers.md is one the worker's decoder accepts."""

from __future__ import annotations

import re
from pathlib import Path

from shardbill.worker import json_decoder

HOWTO = Path(__file__).resolve().parents[2] / "docs" / "howto" / "run-workers.md"


def test_the_howto_message_decodes_to_an_event() -> None:
    """Every ``json`` block of the how-to is a valid event message."""
    blocks = re.findall(r"```json\n(.*?)```", HOWTO.read_text(encoding="utf-8"), re.DOTALL)
    assert blocks
    for block in blocks:
        event = json_decoder()(block.strip().encode())
        assert event.account == 100042
