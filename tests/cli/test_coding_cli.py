"""The compress, decompress and entropy commands: files, pipes, refusals and exit codes."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import math
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from crossentropy import cli, coding
from crossentropy.cli import _coding

DATA = Path(coding.__file__).with_name("_prefix.py").read_bytes()[:5000]


@pytest.fixture
def run(monkeypatch):
    """Run the real `cli.main` with only the coding subcommands registered."""
    monkeypatch.setattr(cli, "_SUBCOMMAND_MODULES", ("_coding",))
    return cli.main


def test_file_round_trip(run, tmp_path):
    source = tmp_path / "in.txt"
    source.write_bytes(DATA)
    for model in coding.MODELS:
        packed = tmp_path / f"packed.{model}"
        restored = tmp_path / f"restored.{model}"
        assert run(["compress", str(source), str(packed), "--model", model]) == 0
        assert coding.decompress(packed.read_bytes()) == DATA
        assert run(["decompress", str(packed), str(restored)]) == 0
        assert restored.read_bytes() == DATA
        # A new file gets the usual permissions, not the temporary file's 0600.
        umask = os.umask(0)
        os.umask(umask)
        assert restored.stat().st_mode & 0o777 == 0o666 & ~umask
    assert source.read_bytes() == DATA


def test_refuses_to_overwrite_without_force(run, tmp_path, capsys):
    source = tmp_path / "in"
    source.write_bytes(DATA)
    target = tmp_path / "out"
    target.write_bytes(b"keep me")
    assert run(["compress", str(source), str(target)]) == 1
    assert "--force" in capsys.readouterr().err
    assert target.read_bytes() == b"keep me"
    assert run(["compress", str(source), str(target), "--force"]) == 0
    assert coding.decompress(target.read_bytes()) == DATA


def test_failing_run_leaves_no_output(run, tmp_path, capsys):
    blob = bytearray(coding.compress(DATA))
    blob[-1] ^= 0x10
    source = tmp_path / "damaged.cez"
    source.write_bytes(bytes(blob))
    target = tmp_path / "restored"
    assert run(["decompress", str(source), str(target)]) == 1
    error = capsys.readouterr().err
    assert "payload checksum" in error
    assert len(error.strip().splitlines()) == 1  # one line, no traceback
    assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["damaged.cez"]  # no temp file
    assert source.read_bytes() == bytes(blob)


def test_failing_forced_run_keeps_old_output(run, tmp_path):
    source = tmp_path / "foreign"
    source.write_bytes(b"not a container")
    target = tmp_path / "out"
    target.write_bytes(b"old")
    assert run(["decompress", str(source), str(target), "--force"]) == 1
    assert target.read_bytes() == b"old"


def test_missing_input_is_exit_1(run, tmp_path, capsys):
    assert run(["compress", str(tmp_path / "nope"), str(tmp_path / "out")]) == 1
    assert "nope" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_usage_errors_are_exit_2(run, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        run(["compress", "a", "b", "--model", "order9"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        run(["decompress", "a"])
    assert exit_info.value.code == 2


def test_entropy_json_matches_the_api(run, tmp_path, capsys):
    rng = np.random.default_rng(3)
    files = {
        "text": DATA,
        "skewed": rng.choice(4, 4000, p=[0.5, 0.2, 0.2, 0.1]).astype(np.uint8).tobytes(),
        "empty": b"",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    assert run(["entropy", "--json", *(str(tmp_path / name) for name in files)]) == 0
    reports = json.loads(capsys.readouterr().out)
    assert [Path(r["file"]).name for r in reports] == list(files)
    for report, data in zip(reports, files.values(), strict=True):
        size = len(data)
        assert report["size"] == size
        sizes = {model: len(coding.compress(data, model=model)) for model in coding.MODELS}
        sizes["gzip"] = len(gzip.compress(data, 9, mtime=0))
        sizes["bz2"] = len(bz2.compress(data, 9))
        sizes["xz"] = len(lzma.compress(data, preset=9))
        for coder, n_bytes in sizes.items():
            assert report[f"{coder}_bytes"] == n_bytes, coder
        if not size:
            # Bits per byte are undefined (they were all 0.0, although a container of
            # b"" is 80 bytes and gzip's 20); the sizes are there.
            for key in ["entropy", "huffman", *sizes]:
                assert report[key] is None, key
            assert report["huffman_bits"] == 0
            continue
        counts = np.bincount(np.frombuffer(data, dtype=np.uint8), minlength=256)
        entropy = -sum(c / size * math.log2(c / size) for c in counts if c)
        assert report["entropy"] == pytest.approx(entropy, rel=1e-12)
        assert entropy <= report["huffman"] < entropy + 1
        for model in coding.MODELS:
            assert report[model] == 8 * len(coding.compress(data, model=model)) / size
        assert report["gzip"] == 8 * len(gzip.compress(data, 9, mtime=0)) / size
        assert report["bz2"] == 8 * len(bz2.compress(data, 9)) / size
        assert report["xz"] == 8 * len(lzma.compress(data, preset=9)) / size
    skewed = reports[1]
    # SEED.md: H([.5, .2, .2, .1]) = 1.761; a 4000-draw sample lands near it.
    assert skewed["entropy"] == pytest.approx(1.7609640474436812, abs=0.05)
    assert skewed["huffman"] == pytest.approx(1.8, abs=0.05)


def test_entropy_reads_stdin(run, tmp_path, capsys, monkeypatch):
    """'-' measures stdin, once: the same report as the file; '-' twice is refused."""
    import io

    source = tmp_path / "in.txt"
    source.write_bytes(DATA)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(DATA)))
    assert run(["entropy", "--json", "-", str(source)]) == 0
    piped, from_file = json.loads(capsys.readouterr().out)
    assert piped["file"] == "-"
    assert {k: v for k, v in piped.items() if k != "file"} == {
        k: v for k, v in from_file.items() if k != "file"
    }
    assert run(["entropy", "-", "-"]) == 1
    assert "can be read once" in capsys.readouterr().err


def test_entropy_table(run, tmp_path, capsys):
    (tmp_path / "f").write_bytes(DATA)
    assert run(["entropy", str(tmp_path / "f")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "gzip -9" in out[1]
    assert "context" in out[1]
    assert out[2].split()[1] == str(len(DATA))


# -- the installed command, through a real process -------------------------------------


def _command(*args: str, data: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "crossentropy", *args],
        input=data,
        capture_output=True,
        check=False,
        timeout=120,
    )


def test_pipes_round_trip():
    packed = _command("compress", "-", "-", "--model", "context", data=DATA)
    assert packed.returncode == 0, packed.stderr
    restored = _command("decompress", "-", "-", data=packed.stdout)
    assert restored.returncode == 0, restored.stderr
    assert restored.stdout == DATA


def test_process_exit_codes(tmp_path):
    (tmp_path / "in").write_bytes(DATA)
    ok = _command("compress", str(tmp_path / "in"), str(tmp_path / "out"))
    assert ok.returncode == 0
    assert ok.stderr == b""
    again = _command("compress", str(tmp_path / "in"), str(tmp_path / "out"))
    assert again.returncode == 1
    assert b"--force" in again.stderr
    assert b"Traceback" not in again.stderr
    bad = _command("decompress", "-", str(tmp_path / "x"), data=b"garbage")
    assert bad.returncode == 1
    assert not (tmp_path / "x").exists()
    usage = _command("compress")
    assert usage.returncode == 2
    report = _command("entropy", "--json", str(tmp_path / "in"))
    assert report.returncode == 0
    assert report.stderr == b""
    assert json.loads(report.stdout)[0]["size"] == len(DATA)


def test_entropy_progress_only_on_a_terminal(run, tmp_path, capsys, monkeypatch):
    from crossentropy.cli import _coding

    (tmp_path / "f").write_bytes(DATA)
    monkeypatch.setattr(_coding, "_PROGRESS_BYTES", 1)
    assert run(["entropy", str(tmp_path / "f")]) == 0
    assert capsys.readouterr().err == ""  # captured stderr is not a terminal
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert run(["entropy", "--json", str(tmp_path / "f")]) == 0
    captured = capsys.readouterr()
    assert "[" in captured.err
    assert "xz" in captured.err
    assert captured.err.endswith("\r")  # the line is cleared at the end
    assert json.loads(captured.out)[0]["size"] == len(DATA)


@pytest.mark.parametrize("model", ["order0", "context"])
def test_compress_and_decompress_progress_only_on_a_terminal(
    run, tmp_path, capsys, monkeypatch, model
):
    from crossentropy.cli import _coding

    (tmp_path / "f").write_bytes(DATA)
    monkeypatch.setattr(_coding, "_PROGRESS_BYTES", 1)
    assert run(["compress", "--model", model, str(tmp_path / "f"), str(tmp_path / "c")]) == 0
    assert run(["decompress", str(tmp_path / "c"), str(tmp_path / "d")]) == 0
    assert capsys.readouterr().err == ""  # captured stderr is not a terminal
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    for verb, args in [
        ("compressing", ["compress", "--model", model, str(tmp_path / "f"), str(tmp_path / "c")]),
        ("decompressing", ["decompress", str(tmp_path / "c"), str(tmp_path / "d")]),
    ]:
        assert run([*args, "--force"]) == 0
        err = capsys.readouterr().err
        assert f"{verb} [....................]   0% of" in err
        assert f"{verb} [####################] 100% of" in err
        cleared = err.split("\r")  # the line is overwritten with spaces at the end
        assert cleared[-1] == ""
        assert cleared[-2].strip() == ""
        assert len(cleared[-2]) >= len(cleared[-3])
    assert (tmp_path / "d").read_bytes() == DATA
    monkeypatch.setattr(_coding, "_PROGRESS_BYTES", len(DATA) + 1)  # below the threshold
    assert run(["decompress", str(tmp_path / "c"), str(tmp_path / "d"), "--force"]) == 0
    assert capsys.readouterr().err == ""


def test_byte_progress_shows_the_time_left_once_a_rate_is_known(capsys, monkeypatch):
    from types import SimpleNamespace

    from crossentropy.cli import _coding

    clock = SimpleNamespace(now=100.0)
    monkeypatch.setattr(_coding, "time", SimpleNamespace(monotonic=lambda: clock.now))
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    total = 4 << 20
    progress = _coding._ByteProgress("big.cez", "decompressing")
    progress(0, total)
    clock.now += 0.5  # too soon to extrapolate a rate
    progress(total // 8, total)
    clock.now += 1.5  # 2 s for a quarter: 6 s for the rest
    progress(total // 4, total)
    progress.close()
    lines = capsys.readouterr().err.split("\r")
    assert lines[1].rstrip() == "big.cez: decompressing [....................]   0% of 4.2 MB"
    assert lines[2].rstrip() == "big.cez: decompressing [##..................]  12% of 4.2 MB"
    assert lines[3].rstrip() == (
        "big.cez: decompressing [#####...............]  25% of 4.2 MB, 6 s left"
    )
    assert lines[4] == " " * len(lines[3])


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_output_that_is_a_directory_or_in_a_missing_one(run, tmp_path, capsys, force):
    # OUT a directory said "exists; pass --force", and with --force failed on a
    # temporary name; a missing folder also named the temporary file.
    (tmp_path / "in").write_bytes(DATA)
    (tmp_path / "folder").mkdir()
    assert run(["compress", str(tmp_path / "in"), str(tmp_path / "folder"), *force]) == 1
    err = capsys.readouterr().err
    assert "OUT must be a file, not a directory" in err
    assert ".part" not in err
    missing = tmp_path / "nowhere" / "out"
    assert run(["compress", str(tmp_path / "in"), str(missing), *force]) == 1
    err = capsys.readouterr().err
    assert "OUT must be in an existing directory" in err
    assert ".part" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "in"]


def _order0_container(value: int, length: int) -> bytes:
    """A valid order0 container of `length` copies of one byte, built from the layout."""
    import hashlib
    import struct
    import zlib

    bitmap = bytearray(32)
    bitmap[value // 8] |= 1 << (value % 8)
    count = bytearray()
    rest = length
    while True:
        count.append((rest & 0x7F) | (0x80 if rest >> 7 else 0))
        rest >>= 7
        if not rest:
            break
    params = bytes(bitmap) + bytes(count)
    digest = hashlib.blake2b(bytes([value]) * min(length, 64), digest_size=8).digest()
    header = (
        b"\x89CEZ"
        + struct.pack("<BB", 1, 6)
        + b"order0"
        + struct.pack("<I", len(params))
        + params
        + struct.pack("<Q", length)
        + digest
        + struct.pack("<QI", 0, zlib.crc32(b""))
    )
    return header + struct.pack("<I", zlib.crc32(header))


def test_original_too_large_for_memory_is_exit_1(run, tmp_path, capsys):
    # 2^50 equal bytes code to a 60-byte container; restoring them raised MemoryError
    # with a traceback.
    assert coding.decompress(_order0_container(7, 64)) == b"\7" * 64  # the helper is right
    (tmp_path / "bomb").write_bytes(_order0_container(7, 2**50))
    assert run(["decompress", str(tmp_path / "bomb"), str(tmp_path / "out")]) == 1
    assert "out of memory" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_compress_refuses_to_overwrite_its_input(run, tmp_path, capsys):
    source = tmp_path / "in"
    source.write_bytes(DATA)
    assert run(["compress", str(source), str(source), "--force"]) == 1
    assert "OUT must differ from IN" in capsys.readouterr().err
    assert source.read_bytes() == DATA


def test_forced_overwrite_keeps_the_file_mode(run, tmp_path):
    source = tmp_path / "in"
    source.write_bytes(DATA)
    target = tmp_path / "out"
    target.write_bytes(b"old")
    target.chmod(0o600)
    assert run(["compress", str(source), str(target), "--force"]) == 0
    assert target.stat().st_mode & 0o777 == 0o600
    assert coding.decompress(target.read_bytes()) == DATA


def test_default_model_is_order0(run, tmp_path):
    (tmp_path / "in").write_bytes(DATA)
    assert run(["compress", str(tmp_path / "in"), str(tmp_path / "out")]) == 0
    assert (tmp_path / "out").read_bytes() == coding.compress(DATA, model="order0")


def test_entropy_table_cells_are_the_json_values(run, tmp_path, capsys):
    (tmp_path / "f").write_bytes(DATA)
    assert run(["entropy", "--json", str(tmp_path / "f")]) == 0
    report = json.loads(capsys.readouterr().out)[0]
    assert run(["entropy", str(tmp_path / "f")]) == 0
    cells = capsys.readouterr().out.splitlines()[2].split()
    columns = ["entropy", "huffman", *coding.MODELS, "gzip", "bz2", "xz"]
    assert cells == [str(tmp_path / "f"), str(len(DATA))] + [f"{report[c]:.3f}" for c in columns]


# -- OUT that is not a regular file: written into, never replaced -----------------------


def _read_fifo_in_background(fifo: Path) -> tuple[threading.Thread, list[bytes]]:
    received: list[bytes] = []

    def reader() -> None:
        with open(fifo, "rb") as handle:
            received.append(handle.read())

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    return thread, received


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_fifo_output_is_written_into_not_replaced(run, tmp_path, force):
    # It said "fifo exists; pass --force", and with --force replaced the FIFO by a regular
    # file that no reader ever saw.
    (tmp_path / "in").write_bytes(DATA)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    thread, received = _read_fifo_in_background(fifo)
    assert run(["compress", str(tmp_path / "in"), str(fifo), *force]) == 0
    thread.join(timeout=30)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert coding.decompress(received[0]) == DATA
    (tmp_path / "c").write_bytes(received[0])
    thread, received = _read_fifo_in_background(fifo)
    assert run(["decompress", str(tmp_path / "c"), str(fifo), *force]) == 0
    thread.join(timeout=30)
    assert received == [DATA]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "fifo", "in"]  # no temp file


def test_forced_output_through_a_symlink_replaces_its_target_not_the_link(run, tmp_path, capsys):
    (tmp_path / "in").write_bytes(DATA)
    (tmp_path / "sub").mkdir()
    target = tmp_path / "sub" / "target"
    target.write_bytes(b"old")
    target.chmod(0o640)
    link = tmp_path / "link"
    link.symlink_to(Path("sub") / "target")  # relative, as `ln -s` makes them
    assert run(["compress", str(tmp_path / "in"), str(link)]) == 1
    assert "--force" in capsys.readouterr().err
    assert target.read_bytes() == b"old"
    assert run(["compress", str(tmp_path / "in"), str(link), "--force"]) == 0
    assert link.is_symlink()
    assert os.readlink(link) == str(Path("sub") / "target")
    assert coding.decompress(target.read_bytes()) == DATA
    assert target.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["target"]
    # `..` after a linked folder is the parent of the folder it links to, as for the
    # kernel: `out -> linkdir/../victim` with `linkdir -> real/deep` names real/victim.
    # (The link text was normalised lexically, and ./victim, another file, replaced.)
    (tmp_path / "real" / "deep").mkdir(parents=True)
    (tmp_path / "linkdir").symlink_to(Path("real") / "deep")
    (tmp_path / "real" / "victim").write_bytes(b"named")
    (tmp_path / "victim").write_bytes(b"unrelated")
    (tmp_path / "out").symlink_to(Path("linkdir") / ".." / "victim")
    assert (tmp_path / "out").resolve() == tmp_path / "real" / "victim"
    assert run(["compress", str(tmp_path / "in"), str(tmp_path / "out"), "--force"]) == 0
    assert coding.decompress((tmp_path / "real" / "victim").read_bytes()) == DATA
    assert (tmp_path / "victim").read_bytes() == b"unrelated"
    assert (tmp_path / "out").is_symlink()
    # The same path given as OUT itself, no link in front of it.
    (tmp_path / "real" / "victim").write_bytes(b"named")
    named = str(tmp_path / "linkdir" / ".." / "victim")
    assert run(["compress", str(tmp_path / "in"), named]) == 1
    assert "--force" in capsys.readouterr().err
    assert run(["compress", str(tmp_path / "in"), named, "--force"]) == 0
    assert coding.decompress((tmp_path / "real" / "victim").read_bytes()) == DATA
    assert (tmp_path / "victim").read_bytes() == b"unrelated"
    # A link to the input is the input.
    (tmp_path / "to-in").symlink_to(tmp_path / "in")
    assert run(["compress", str(tmp_path / "in"), str(tmp_path / "to-in"), "--force"]) == 1
    assert "OUT must differ from IN" in capsys.readouterr().err
    assert (tmp_path / "in").read_bytes() == DATA


def test_dangling_symlink_output_needs_force_and_creates_its_target(run, tmp_path, capsys):
    (tmp_path / "in").write_bytes(DATA)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "new")
    assert run(["compress", str(tmp_path / "in"), str(link)]) == 1
    assert "--force" in capsys.readouterr().err
    assert run(["compress", str(tmp_path / "in"), str(link), "--force"]) == 0
    assert link.is_symlink()
    assert coding.decompress((tmp_path / "new").read_bytes()) == DATA
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    assert run(["compress", str(tmp_path / "in"), str(loop), "--force"]) == 1
    assert "loop of symbolic links" in capsys.readouterr().err
    assert loop.is_symlink()


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_output_to_an_open_descriptor(tmp_path, force):
    # /dev/stdout and /dev/fd/N name open descriptors: written into, --force or not (they
    # said "exists; pass --force", then failed on a temporary name beside them).
    packed = _command("compress", "-", "/dev/stdout", *force, data=DATA)
    assert packed.returncode == 0, packed.stderr
    assert coding.decompress(packed.stdout) == DATA
    (tmp_path / "c").write_bytes(packed.stdout)
    read, write = os.pipe()
    with open(read, "rb") as reader:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "crossentropy",
                "decompress",
                str(tmp_path / "c"),
                f"/dev/fd/{write}",
                *force,
            ],
            pass_fds=(write,),
            stderr=subprocess.PIPE,
        )
        os.close(write)
        restored = reader.read()
        assert process.wait(timeout=120) == 0, process.stderr.read()
        process.stderr.close()
    assert restored == DATA


# -- a closed output pipe ---------------------------------------------------------------


@pytest.mark.parametrize("command", ["decompress", "measure"])
def test_closed_output_pipe_is_quiet_exit_141(tmp_path, command):
    # `decompress big - | head -c 10` exited 0 after writing 64 KiB of 2 MB (the short
    # write went unchecked), and `| true` printed "error: [Errno 32] Broken pipe".
    if command == "decompress":
        data = np.random.default_rng(0).integers(0, 256, 1 << 21, dtype=np.uint8).tobytes()
        (tmp_path / "c").write_bytes(coding.compress(data))
        argv = ["decompress", str(tmp_path / "c"), "-"]
    else:
        argv = ["measure", ",".join(["1/5000"] * 5000)]  # an outcome table of 5000 rows
    process = subprocess.Popen(
        [sys.executable, "-m", "crossentropy", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout.read(10)
    process.stdout.close()
    assert process.wait(timeout=120) == 141
    assert process.stderr.read() == b""
    process.stderr.close()


def test_entropy_table_of_an_empty_file_says_n_a(run, tmp_path, capsys):
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "f").write_bytes(DATA)
    assert run(["entropy", str(tmp_path / "empty"), str(tmp_path / "f")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "n/a: an empty file" in lines[0]
    assert lines[2].split() == [str(tmp_path / "empty"), "0"] + ["n/a"] * (5 + len(coding.MODELS))
    assert "n/a" not in lines[3]
    assert run(["entropy", str(tmp_path / "f")]) == 0
    assert "n/a" not in capsys.readouterr().out


# -- OUT == IN, whatever OUT is ---------------------------------------------------------


def test_descriptor_output_open_on_the_input_is_refused(tmp_path):
    # `decompress same.cez /dev/stdout >> same.cez` appended the data to its own input
    # (the OUT == IN check was skipped for descriptors, FIFOs and devices).
    packed = tmp_path / "same.cez"
    packed.write_bytes(coding.compress(DATA))
    size = packed.stat().st_size
    for argv in (["decompress", str(packed), "/dev/stdout"], ["decompress", "-", "/dev/stdout"]):
        with open(packed, "ab") as append, open(packed, "rb") as stdin:
            process = subprocess.run(
                [sys.executable, "-m", "crossentropy", *argv],
                stdin=stdin,
                stdout=append,
                stderr=subprocess.PIPE,
                check=False,
                timeout=120,
            )
        assert process.returncode == 1, argv
        assert process.stderr.decode().splitlines() == [
            "crossentropy decompress: error: OUT must differ from IN; /dev/stdout is open on IN"
        ]
        assert packed.stat().st_size == size
    # Through /dev/fd/N as well.
    descriptor = os.open(packed, os.O_WRONLY | os.O_APPEND)
    try:
        process = subprocess.run(
            [
                sys.executable,
                "-m",
                "crossentropy",
                "decompress",
                str(packed),
                f"/dev/fd/{descriptor}",
            ],
            pass_fds=(descriptor,),
            capture_output=True,
            check=False,
            timeout=120,
        )
    finally:
        os.close(descriptor)
    assert process.returncode == 1
    assert b"OUT must differ from IN" in process.stderr
    assert packed.stat().st_size == size


def test_fifo_that_is_both_input_and_output_is_refused_at_once(tmp_path):
    # `compress f f` on a FIFO hung for ever: it read the FIFO (waiting for a writer),
    # then blocked opening it for writing. No writer here: it must not even read.
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    for command in ("compress", "decompress"):
        process = _command(command, str(fifo), str(fifo))  # times out (fails) if it hangs
        assert process.returncode == 1
        assert process.stderr.decode().splitlines() == [
            f"crossentropy {command}: error: OUT must differ from IN; both are {fifo}"
        ]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_terminal_or_null_device_as_input_and_output_is_no_conflict(run, tmp_path):
    # Reading a character device and writing to it loses nothing (a terminal:
    # `compress /dev/stdin /dev/stdout`); only /dev/null is used here.
    assert run(["compress", os.devnull, os.devnull]) == 0


# -- block devices: only with --force ---------------------------------------------------


def test_block_devices_are_classified_by_their_mode():
    assert _coding._is_block_device(stat.S_IFBLK | 0o660)
    for kind in (stat.S_IFCHR, stat.S_IFIFO, stat.S_IFREG, stat.S_IFSOCK):
        assert not _coding._is_block_device(kind | 0o660)


def test_block_device_output_needs_force(run, tmp_path, capsys, monkeypatch):
    # `decompress backup.cez /dev/sdb` wrote into the disk with no --force. No device is
    # touched here: a FIFO stands for the block device.
    (tmp_path / "in").write_bytes(DATA)
    device = tmp_path / "disk"
    os.mkfifo(device)
    monkeypatch.setattr(_coding, "_is_block_device", stat.S_ISFIFO)
    opened: list[int] = []
    real_open = os.open

    def recording_open(path, flags, *args, **kwargs):
        if os.fspath(path) == str(device):
            opened.append(flags)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(_coding.os, "open", recording_open)
    for command in ("compress", "decompress"):
        assert run([command, str(tmp_path / "in"), str(device)]) == 1
        assert capsys.readouterr().err.splitlines() == [
            f"crossentropy {command}: error: {device} is a block device; pass --force to write "
            "into it"
        ]
    assert opened == []
    thread, received = _read_fifo_in_background(device)
    assert run(["compress", str(tmp_path / "in"), str(device), "--force"]) == 0
    thread.join(timeout=30)
    assert coding.decompress(received[0]) == DATA
    assert len(opened) == 1
    assert not opened[0] & os.O_APPEND  # from its start: O_APPEND would begin at its end
    assert not opened[0] & (os.O_CREAT | os.O_TRUNC)
    assert stat.S_ISFIFO(os.lstat(device).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disk", "in"]  # no temp file


def test_force_help_is_shared_and_names_block_devices(run, capsys):
    helps = []
    for command in ("compress", "decompress"):
        with pytest.raises(SystemExit):
            run([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        helps.append(text[text.rindex("--force") :])
        assert "block device" in helps[-1]
        assert "FIFO" in helps[-1]
    assert helps[0] == helps[1]


# -- a closed stdout (`>&-`) ------------------------------------------------------------


def _with_stdout_closed(*args: str) -> subprocess.CompletedProcess:
    """The command run as the shell runs `crossentropy ARGS >&-`: fd 1 not open."""
    return subprocess.run(
        ["sh", "-c", 'exec "$@" >&-', "sh", sys.executable, "-m", "crossentropy", *args],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        check=False,
        timeout=120,
    )


def test_closed_stdout_is_no_error_for_a_command_that_writes_a_file(tmp_path):
    # `decompress x.cez out >&-` wrote the file, then failed with a traceback
    # ('NoneType' object has no attribute 'flush').
    (tmp_path / "in").write_bytes(DATA)
    packed = _with_stdout_closed("compress", str(tmp_path / "in"), str(tmp_path / "c"))
    assert (packed.returncode, packed.stderr) == (0, b"")
    restored = _with_stdout_closed("decompress", str(tmp_path / "c"), str(tmp_path / "out"))
    assert (restored.returncode, restored.stderr) == (0, b"")
    assert (tmp_path / "out").read_bytes() == DATA


@pytest.mark.parametrize(
    "argv", [["measure", "0.5,0.5"], ["entropy", "IN"], ["compress", "IN", "-"]]
)
def test_closed_stdout_is_one_line_exit_1_for_a_command_that_writes_to_it(tmp_path, argv):
    # As `gzip -c f >&-`: the output has nowhere to go.
    (tmp_path / "in").write_bytes(DATA)
    argv = [str(tmp_path / "in") if a == "IN" else a for a in argv]
    process = _with_stdout_closed(*argv)
    assert process.returncode == 1
    assert process.stderr.decode().splitlines() == [
        f"crossentropy {argv[0]}: error: [Errno 9] stdout is closed (`>&-`); nowhere to "
        "write the output"
    ]
