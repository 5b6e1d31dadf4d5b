"""Coverage-guided fuzzing of the M-PROXY parser with atheris (on demand; not part of pytest).

Property: any bytes, in any chunking, give events or a documented RemoteProtocolError; the outcome does
not depend on the chunking. Run it (atheris needs a clang-built CPython wheel, see tests/fuzz/README.md):

    pip install atheris
    python tests/fuzz/fuzz_parser.py -max_total_time=300 tests/fuzz/corpus

Any other exception, or a chunking-dependent result, is a crash that atheris saves as crash-<sha>.
"""

from __future__ import annotations

import sys
from typing import Any

REASONS = (
    "version byte", "header length 0", "is not ASCII", "fields; at least 4", "datalen", "stream ended inside",
)


def outcome(chunks: list[bytes]) -> tuple[list[Any], tuple[int, str] | None]:
    from mproxy.codec import Parser, RemoteProtocolError

    parser = Parser(max_body=1 << 16)
    events: list[Any] = []
    try:
        for chunk in chunks:
            events += parser.feed(chunk)
        parser.close()
    except RemoteProtocolError as err:
        if not any(r in err.reason for r in REASONS):
            raise AssertionError(f"undocumented reason: {err}") from err
        events += err.events
        return events, (err.offset, err.reason)
    return events, None


def test_one_input(data: bytes) -> None:
    if not data:
        return
    # The first byte picks the chunk size (1..256 bytes), the rest is the stream.
    size, stream = data[0] + 1, data[1:]
    whole = outcome([stream])
    split = outcome([stream[i:i + size] for i in range(0, len(stream), size)])
    if whole[1] is not None and "stream ended inside" in whole[1][1]:
        assert whole[0] == split[0]
    else:
        assert whole == split, (whole, split)


def main() -> None:
    import atheris  # untyped, and installed only for fuzzing (README.md): ignore_missing_imports

    with atheris.instrument_imports():
        import mproxy.codec  # noqa: F401
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
