"""docs/protocol.md agrees with the golden vectors and the error codes the code uses."""

from __future__ import annotations

import re
from pathlib import Path

from bridge.errors import ErrorCode
from tests.protocol.conftest import load_vectors

DOC = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()


def test_every_byte_example_is_a_golden_vector() -> None:
    vectors = {v["name"]: v["hex"] for v in load_vectors()}
    blocks = re.findall(r"^```text\n# vector: (\w+)[^\n]*\n(.*?)^```", DOC, re.S | re.M)
    assert len(blocks) >= 15
    for name, body in blocks:
        data = "".join(re.sub(r"#.*", "", line).replace(" ", "") for line in body.splitlines())
        assert data == vectors[name], name


def test_every_error_code_is_in_the_error_table() -> None:
    table = DOC.split("## 7. Errors", 1)[1].split("## 8.", 1)[0]
    for code in ErrorCode:
        assert f"`{code.value}`" in table, code


def test_the_doc_is_versioned_and_names_the_backpressure_rule() -> None:
    assert "protocol version **1**" in DOC
    assert "**The backpressure rule.**" in DOC
