"""A serving process's set-up: FastMCP opens no spans unless the operator asked for them."""

from __future__ import annotations

import fastmcp
import pytest

from panaversity_fs.ops.serving import no_fastmcp_spans


@pytest.mark.parametrize(
    ("asked", "expected"), [(None, "propagation_only"), ("native", "native"), ("off", "off")]
)
def test_fastmcp_opens_no_spans_unless_the_operator_set_a_mode(
    monkeypatch: pytest.MonkeyPatch, asked: str | None, expected: str
) -> None:
    # FastMCP read the variable when it was imported; its default mode is `native`.
    monkeypatch.setattr(fastmcp.settings, "telemetry_mode", asked or "native")
    if asked is None:
        monkeypatch.delenv("FASTMCP_TELEMETRY_MODE", raising=False)
    else:
        monkeypatch.setenv("FASTMCP_TELEMETRY_MODE", asked)
    no_fastmcp_spans()
    assert fastmcp.settings.telemetry_mode == expected
