"""JSON.stringify equivalence for the values the codec sends (checked against node in tests/interop)."""

from __future__ import annotations

import pytest

from mproxy.codec.jsjson import js_number, js_stringify


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1.0, "1"), (0.1, "0.1"), (1e21, "1e+21"), (1.5e-7, "1.5e-7"), (1e-6, "0.000001"),
        (12345678901234567890, "12345678901234567000"), (-0.0, "0"), (2**53, "9007199254740992"),
        (123456789012345680000.0, "123456789012345680000"), (5e-324, "5e-324"), (1.7976931348623157e308,
        "1.7976931348623157e+308"), (-1234.5, "-1234.5"),
    ],
)
def test_numbers(value: float, text: str) -> None:
    assert js_number(value) == text


def test_stringify() -> None:
    assert js_stringify({"b": 1, "2": 2, "1": [None, True, "\u2028\x00é"], "01": 0}) == (
        '{"1":[null,true,"\u2028\\u0000é"],"2":2,"b":1,"01":0}'
    )
    assert js_stringify("\ud800x") == '"\\ud800x"'
    assert js_stringify(float("nan")) == "null"
