"""The README's examples run, and every value its comments and transcripts show is what the
library gives, to the digits shown: the first page a newcomer reads must not drift from the
code. Blocks are read from README.md itself, so an edit there is checked too."""

from __future__ import annotations

import ast
import re
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from crossentropy import coding, info
from crossentropy.cli import main

README = Path(__file__).resolve().parent.parent / "README.md"
NUMBER = r"-?\d+(?:\.\d+)?(?:e-?\d+)?"


def blocks(language: str) -> list[str]:
    """The README's fenced blocks of ``language``, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def block_with(language: str, marker: str) -> str:
    """The one ``language`` block that contains ``marker``."""
    found = [block for block in blocks(language) if marker in block]
    assert len(found) == 1, f"expected one {language} block with {marker!r}; got {len(found)}"
    return found[0]


def split_comment(line: str) -> tuple[str, str]:
    """``(code, comment)`` of one line of Python (the comment without its ``#``)."""
    if line.lstrip().startswith("#"):  # a line of comment only
        return "", line.lstrip()[1:].strip()
    code, _, comment = line.partition("  #")
    return code.strip(), comment.strip()


def decimals(text: str) -> int:
    """Digits after the point in a number as written."""
    return -Decimal(text).as_tuple().exponent if "." in text else 0


def assert_shown(value: float, text: str) -> None:
    """``value`` rounds to ``text`` at the digits ``text`` shows."""
    places = decimals(text)
    assert f"{float(value):.{places}f}" == f"{float(text):.{places}f}", (value, text)


def shown_values(comment: str) -> list[str]:
    """The values a comment claims: a bracketed list, else the number after ``=``, else the
    first number."""
    listed = re.match(r"[^\[]*\[([^\]]*)\]", comment)
    if listed and "=" not in comment.split("[")[0]:
        return [item.strip() for item in listed.group(1).split(",")]
    after = re.search(rf"=\s*({NUMBER})", comment)
    if after:
        return [after.group(1)]
    first = re.search(NUMBER, comment)
    return [first.group(0)] if first else []


def test_quick_start_values_are_the_library_s():
    namespace: dict = {}
    checked = 0
    for line in block_with("python", "info.entropy(p)").splitlines():
        code, comment = split_comment(line)
        if not code:
            continue
        tree = ast.parse(code)
        if isinstance(tree.body[0], ast.Expr):
            value = eval(code, namespace)  # the README's own example
            claims = shown_values(comment)
            assert claims, f"no value shown for {code!r}"
            got = np.atleast_1d(np.asarray(value, dtype=np.float64))
            assert got.size == len(claims), (code, claims)
            for number, text in zip(got, claims, strict=True):
                assert_shown(number, text)
            checked += 1
        else:
            exec(code, namespace)  # the README's own example
    assert checked == 6


def test_error_message_is_the_one_shown():
    text = block_with("text", "ValueError")
    call, _, shown = text.partition("\n")
    expression = call.removeprefix(">>> ")
    kind, _, message = " ".join(shown.split()).partition(": ")
    with pytest.raises(ValueError, match="must sum to 1") as raised:
        eval(expression, {"info": info})  # the README's own example
    assert kind == "ValueError"
    assert " ".join(str(raised.value).split()) == message


def test_losses_block_runs_and_the_first_line_is_torch_s():
    torch = pytest.importorskip("torch")
    from crossentropy import losses

    generator = torch.Generator().manual_seed(0)
    tokens, hidden_dim, classes = 12, 8, 10
    logits = torch.randn(tokens, classes, generator=generator, dtype=torch.float64)
    targets = torch.randint(0, classes, (tokens,), generator=generator)
    namespace = {
        "torch": torch,
        "losses": losses,
        "logits": logits,
        "targets": targets,
        "hidden": torch.randn(tokens, hidden_dim, generator=generator, dtype=torch.float64),
        "head": torch.nn.Linear(hidden_dim, classes, bias=False, dtype=torch.float64),
        "tokens": targets,
    }
    statements, pending = [], ""
    for line in block_with("python", "losses.").splitlines():
        pending = f"{pending} {split_comment(line)[0]}".strip()
        try:  # a call continued on the next line is one statement
            ast.parse(pending)
        except SyntaxError:
            continue
        if pending:
            statements.append(pending)
        pending = ""
    assert not pending
    ran = 0
    for code in statements:
        if code.startswith(("import", "from")):
            continue
        if "vocab_parallel" in code:  # needs a process group; tests/losses cover it
            continue
        exec(code, namespace)  # the README's own example
        ran += 1
        if ran == 1:
            expected = torch.nn.functional.cross_entropy(logits, targets)
            assert torch.allclose(namespace["loss"], expected, rtol=1e-12, atol=0)
    assert ran == 5


def test_coding_block_claims():
    text = block_with("python", "huffman_code")
    code = coding.huffman_code({"A": 0.5, "B": 0.2, "C": 0.2, "D": 0.1})
    shown = re.search(r"code\.codewords\s+# (\{.*\})", text).group(1)
    assert code.codewords == ast.literal_eval(shown)
    bits_shown = re.search(r"# (\d+) bits \(a fixed-length code needs (\d+)\)", text)
    message = re.search(r'code\.encode\("(\w+)"\)', text).group(1)
    assert len(code.encode(message)) == int(bits_shown.group(1))
    fixed = coding.fixed_length_code("ABCD")
    assert len(fixed.encode(message)) == int(bits_shown.group(2))
    assert code.decode(code.encode(message)) == list(message)
    blob = coding.compress(b"...", model="context")
    assert coding.decompress(blob) == b"..."


def test_code_2_is_rejected_for_the_reasons_given():
    sentence = re.search(
        r"Kraft sum is ([\d.]+) > 1 and `(\d+)` reads both as (\w) (\w) and "
        r"as (\w) (\w)",
        " ".join(README.read_text().split()),
    )
    assert sentence, "the README's sentence on code 2 moved"
    code_2 = {"A": "0", "B": "10", "C": "11", "D": "111"}
    assert coding.kraft_sum(len(word) for word in code_2.values()) == float(sentence.group(1))
    bits = sentence.group(2)
    for first, second in ((3, 4), (5, 6)):
        parse = code_2[sentence.group(first)] + code_2[sentence.group(second)]
        assert parse == bits
    assert not coding.is_prefix_free(code_2.values())


def test_measure_transcript_is_the_command_s(capsys):
    text = block_with("text", "$ crossentropy measure")
    command, _, shown = text.partition("\n")
    shown = shown.split("\n$ ")[0]  # up to the next command of the block
    argv = command.removeprefix("$ crossentropy ").split()
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert [line.rstrip() for line in out.strip().splitlines()] == [
        line.rstrip() for line in shown.strip().splitlines()
    ]


def _standard_library_argparse() -> Path:
    import argparse

    return Path(argparse.__file__)


README_ARGPARSE_BYTES = 99661  # the README's transcript: Python 3.11.7's argparse.py


@pytest.mark.skipif(
    not _standard_library_argparse().is_file()
    or _standard_library_argparse().stat().st_size != README_ARGPARSE_BYTES,
    reason="the README's transcript is of Python 3.11.7's argparse.py; this Python has another",
)
def test_entropy_and_compress_transcripts_are_the_commands(capsys, tmp_path):
    text = block_with("text", "$ crossentropy entropy argparse.py")
    lines = text.splitlines()
    at = lines.index("$ crossentropy entropy argparse.py")
    header, row = lines[at + 2].split(), lines[at + 3].split()
    assert row[0] == "argparse.py"
    assert int(row[1]) == README_ARGPARSE_BYTES
    source = tmp_path / "argparse.py"
    source.write_bytes(_standard_library_argparse().read_bytes())
    assert main(["entropy", str(source)]) == 0
    out = capsys.readouterr().out.splitlines()
    got = next(line.split() for line in out if line.split()[:1] == [str(source)])
    assert [line.split() for line in out if line.startswith("file")] == [header]
    assert got[1:] == row[1:]

    claim = re.search(r"--model context\s+# ([\d,]+) -> ([\d,]+) bytes", text)
    packed = tmp_path / "argparse.cez"
    assert main(["compress", str(source), str(packed), "--model", "context"]) == 0
    assert source.stat().st_size == int(claim.group(1).replace(",", ""))
    assert packed.stat().st_size == int(claim.group(2).replace(",", ""))
    assert coding.decompress(packed.read_bytes()) == source.read_bytes()
