"""A serving process's set-up: FastMCP's spans are off unless the operator asked for them."""

from __future__ import annotations

import fastmcp
import pytest

from panaversity_fs.ops.serving import no_fastmcp_spans


@pytest.mark.parametrize(("asked", "expected"), [(None, "off"), ("native", "native")])
def test_fastmcp_spans_are_off_unless_the_operator_set_a_mode(
    monkeypatch: pytest.MonkeyPatch, asked: str | None, expected: str
) -> None:
    monkeypatch.setattr(fastmcp.settings, "telemetry_mode", "native")
    if asked is None:
        monkeypatch.delenv("FASTMCP_TELEMETRY_MODE", raising=False)
    else:
        monkeypatch.setenv("FASTMCP_TELEMETRY_MODE", asked)
    no_fastmcp_spans()
    assert fastmcp.settings.telemetry_mode == expected
