"""The rules tests/e2e/test_docs_examples.py holds the docs to: they catch the drift they promise.

Small Markdown files with real shell blocks; docs/development.md describes the same rules.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.doc_examples import (
    Runner,
    blocks_of,
    examples_of,
    masked,
    one_command,
    run_document,
    shape_differences,
)

PAGE = """# A page

```sh example
echo '{"name": "x", "sizes": [1, 2], "ok": true}'
```
```json output
{"name": "shown", "sizes": [7, 8.5], "ok": false}
```

1. In a list:

   ```sh
   echo illustrative, never run
   ```

```python example
print("served on 127.0.0.1:8080")
```
```text output
served on 127.0.0.1:8080
```
"""


def write(tmp_path: Path, text: str) -> Path:
    doc = tmp_path / "page.md"
    doc.write_text(text)
    return doc


def test_blocks_keep_their_language_flags_line_and_indented_text(tmp_path: Path) -> None:
    blocks = blocks_of(write(tmp_path, PAGE))
    assert [(b.lang, sorted(b.flags), b.line) for b in blocks] == [
        ("sh", ["example"], 3),
        ("json", ["output"], 6),
        ("sh", [], 12),
        ("python", ["example"], 16),
        ("text", ["output"], 19),
    ]
    assert blocks[2].text == "echo illustrative, never run"
    examples = examples_of(write(tmp_path, PAGE))
    assert [(e.block.line, e.output.line if e.output else None) for e in examples] == [
        (3, 6),
        (16, 19),
    ]


def test_an_output_block_must_follow_an_example(tmp_path: Path) -> None:
    doc = write(tmp_path, "```sh\necho hi\n```\n```text output\nhi\n```\n")
    with pytest.raises(AssertionError, match=r"page\.md:4: an output block follows no example"):
        examples_of(doc)


def test_json_shapes_compare_keys_lengths_and_types_not_values() -> None:
    shown = {"a": 1, "b": [{"c": "x"}], "d": None, "e": True}
    assert shape_differences(shown, {"a": 2.5, "b": [{"c": "y"}], "d": None, "e": False}) == []
    assert shape_differences(shown, {"a": 1, "b": [{"c": "x"}], "d": None}) == [
        "$: the docs show keys the output lacks: ['e']"
    ]
    assert shape_differences({"a": 1}, {"a": 1, "new": 0}) == [
        "$: the output has keys the docs omit: ['new']"
    ]
    assert shape_differences(shown, {**shown, "b": [{"c": 3}]}) == [
        "$.b[0].c: the docs show str 'x', the agent gave 3"
    ]
    assert shape_differences(shown, {**shown, "b": []}) == [
        "$.b: the docs show 1 items, the output has 0"
    ]
    assert shape_differences({"n": 1}, {"n": True}) != []  # a boolean is not a number
    assert shape_differences({"n": None}, {"n": 0}) != []


def test_text_outputs_ignore_numbers_hashes_and_spacing_only() -> None:
    shown = "size   78.5 KiB (ratio 0.2669)\nsha256 af451769f44603015f231d50"
    assert masked(shown) == masked("size 3.5 KiB   (ratio 0.98)\nsha256 0123456789abcdef0123")
    assert masked(shown) != masked("size 3.5 MiB (ratio 0.98)\nsha256 0123456789abcdef0123")


def test_a_background_block_is_one_command_without_comments() -> None:
    text = "# the API\nmodel-registry serve --home h \\\n    --listen 127.0.0.1:8700   # default\n"
    assert one_command(text) == "model-registry serve --home h --listen 127.0.0.1:8700"


def test_a_page_whose_examples_hold_passes_and_placeholders_are_replaced(tmp_path: Path) -> None:
    outcomes, failures = run_document(
        write(tmp_path, PAGE), Runner(tmp_path, {"127.0.0.1:8080": "127.0.0.1:45678"})
    )
    assert failures == []
    assert outcomes[1].stdout == "served on 127.0.0.1:45678\n"


@pytest.mark.parametrize(
    ("example", "output", "problem"),
    [
        ("exit 3", "", "exit code 3"),
        ("false | cat", "", "exit code 1"),  # pipefail
        ("echo '{\"a\": 1}'", '```json output\n{"b": 1}\n```\n', "keys the output lacks: ['b']"),
        ("echo not json", '```json output\n{"b": 1}\n```\n', "not one JSON document"),
        ("echo Pushed 3 files", "```text output\nPushed 2 models\n```\n", "the docs show"),
    ],
)
def test_a_failing_or_drifted_example_fails_naming_its_line(
    tmp_path: Path, example: str, output: str, problem: str
) -> None:
    doc = write(tmp_path, f"intro\n\n```sh example\n{example}\n```\n{output}")
    _outcomes, failures = run_document(doc, Runner(tmp_path, {}))
    assert len(failures) == 1
    assert "page.md:3 (sh)" in failures[0]
    assert problem in failures[0]
