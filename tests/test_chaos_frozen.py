"""Scenario 2: a guest that stops reading frees its worker slot within the send timeout."""

from __future__ import annotations

from pathlib import Path

import pytest

from .chaos.frozen import frozen_reader


@pytest.mark.parametrize("phase", ["answer", "pings"])
async def test_frozen_reader_frees_the_slot_within_the_send_timeout(tmp_path: Path, phase: str) -> None:
    # Target: slot freed within send timeout (0.5 s) + reconnect grace (0.2 s) + 0.5 s of the writes blocking;
    # the row says cancelled / send_timeout.
    verdict = await frozen_reader(tmp_path, phase=phase)
    print(verdict.figures)
    verdict.assert_ok()
