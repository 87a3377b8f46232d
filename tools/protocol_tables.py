"""Rewrite docs/protocol.md's field tables from the message declarations (rtdecode/wire/messages.py).

Each table sits between ``<!-- fields:<kind> -->`` and ``<!-- /fields -->``; run this after
changing a message, and the test in tests/test_protocol_doc.py stays green.

    python tools/protocol_tables.py [--check]
"""

import re
import sys
from pathlib import Path

from rtdecode.wire.messages import INPUTS, RESULTS
from rtdecode.wire.schema import field_table

DOC = Path(__file__).parents[1] / "docs" / "protocol.md"
BLOCK = re.compile(r"<!-- fields:(?P<kind>[a-z-]+) -->\n.*?<!-- /fields -->", re.S)


def render(text: str) -> str:
    """``text`` with every field table replaced by the declaration's."""
    tables = {cls.kind: field_table(cls) for cls in RESULTS + INPUTS}
    return BLOCK.sub(lambda m: f"<!-- fields:{m['kind']} -->\n{tables[m['kind']]}\n<!-- /fields -->", text)


if __name__ == "__main__":
    old = DOC.read_text()
    new = render(old)
    if "--check" in sys.argv:
        sys.exit(0 if new == old else "docs/protocol.md's tables differ from the declarations")
    DOC.write_text(new)
