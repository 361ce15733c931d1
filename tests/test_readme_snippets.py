"""The README's "Reading the pipes from your own code" snippets run as written, and the docs hold
together (issue 14).

Each snippet is the Python block after a `<!-- snippet: NAME -->` marker in README.md. A test joins
the blocks a reader would (the set-up block, then the reader, then its use), appends a few lines
that read one more epoch the same way, and runs that script as a separate process against a real
sidecar, with `SAGEMAKER_BASE_DIR` set to the sidecar's ml-root; what it read is checked byte for
byte against the source files. The PyTorch snippet runs only where torch is installed.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import re
import struct
import sys
import textwrap
import unicodedata
from pathlib import Path

import pytest
import recordio
from conftest import (
    REPO,
    base_env,
    channel,
    expected_stream,
    fifo,
    object_payloads,
    sha,
    wait_for_path,
    write_channel_file,
    write_tree,
)

pytestmark = pytest.mark.timeout(60)

README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
MAX_README_BYTES = 20_000


def snippet(name: str) -> str:
    text = README.read_text(encoding="utf-8")
    found = re.findall(rf"<!-- snippet: {re.escape(name)} -->\n```python\n(.*?)```", text, re.S)
    assert len(found) == 1, f"README.md has {len(found)} snippets named {name!r}"
    return found[0]


def program(*names: str, check: str) -> str:
    return "\n\n".join(snippet(n) for n in names) + "\n\n" + textwrap.dedent(check)


def source_tree(tmp_path: Path) -> Path:
    """Objects of awkward sizes: empty, not a multiple of 4, and one over a megabyte (several reads)."""
    rng = random.Random(14)
    return write_tree(tmp_path / "data" / "train", {
        "a-empty.bin": b"",
        "b-three.bin": b"abc",
        "c-big.bin": rng.randbytes((1 << 20) + 12_345),
        "d/e-odd.bin": rng.randbytes(1001),
    })


def run_reader(procs, sidecar, tmp_path: Path, ml_root: Path, code: str, epochs: int, **fields) -> str:
    """Serve `epochs` epochs of the source tree as channel `train` to `code`; returns its stdout."""
    src = source_tree(tmp_path)
    config = write_channel_file(tmp_path / "job.yaml", {"InputDataConfig": [channel("train", src, **fields)]})
    side = sidecar.serve(config, ml_root, epochs=epochs)
    wait_for_path(fifo(ml_root, "train", 0))  # the README: start reading once the sidecar is ready
    script = tmp_path / "reader.py"
    script.write_text(code)
    reader = procs.start([sys.executable, str(script)], "reader", cwd=tmp_path,
                         env=base_env(SAGEMAKER_BASE_DIR=str(ml_root)))
    assert reader.wait(40) == 0, reader.stderr
    assert side.wait(20) == 0, side.stderr
    return reader.stdout


def test_plain_python_snippet_reads_every_epoch_byte_for_byte(tmp_path, ml_root, procs, sidecar):
    out = run_reader(procs, sidecar, tmp_path, ml_root, program("setup", "plain-python", "plain-python-use", check="""
        import hashlib
        print("sha256", hashlib.sha256(b"".join(epoch_chunks("train", 2))).hexdigest())
        """), epochs=3)
    expected = expected_stream(tmp_path / "data" / "train")
    assert out.splitlines() == [
        f"train epoch 0: {len(expected)} bytes",
        f"train epoch 1: {len(expected)} bytes",
        f"sha256 {sha(expected)}",
    ]


def test_recordio_snippet_gives_each_object_as_one_payload(tmp_path, ml_root, procs, sidecar):
    out = run_reader(procs, sidecar, tmp_path, ml_root, program("setup", "recordio", "recordio-use", check="""
        import hashlib, json
        with open(os.path.join(DATA, "train_1"), "rb") as fifo:
            print(json.dumps([hashlib.sha256(p).hexdigest() for p in records(fifo)]))
        """), epochs=2, RecordWrapperType="RecordIO")
    payloads = object_payloads(tmp_path / "data" / "train")
    *lengths, hashes = out.splitlines()
    assert lengths == [str(len(p)) for p in payloads]
    assert json.loads(hashes) == [hashlib.sha256(p).hexdigest() for p in payloads]


def test_recordio_snippet_refuses_broken_streams():
    scope: dict = {}
    exec(snippet("recordio"), scope)  # the function alone, on streams made here
    records = scope["records"]
    good = recordio.encode(b"hello") + recordio.encode(b"")
    assert list(records(io.BytesIO(good))) == [b"hello", b""]
    flagged = struct.pack("<II", recordio.MAGIC, (1 << 29) | 5) + b"hello\0\0\0"
    for stream, error in [(good[:12], EOFError), (good[:20], EOFError), (b"\0" * 8, ValueError),
                          (flagged, ValueError)]:
        with pytest.raises(error):
            list(records(io.BytesIO(stream)))


def test_pytorch_snippet_gives_each_epoch_of_records(tmp_path, ml_root, procs, sidecar):
    pytest.importorskip("torch")
    out = run_reader(procs, sidecar, tmp_path, ml_root, program("setup", "recordio", "pytorch", "pytorch-use", check="""
        import hashlib, json
        dataset.set_epoch(2)
        print(json.dumps([hashlib.sha256(p).hexdigest() for p in DataLoader(dataset, batch_size=None)]))
        """), epochs=3, RecordWrapperType="RecordIO")
    payloads = object_payloads(tmp_path / "data" / "train")
    *lines, hashes = out.splitlines()
    assert lines == [f"{epoch} {len(p)}" for epoch in (0, 1) for p in payloads]
    assert json.loads(hashes) == [hashlib.sha256(p).hexdigest() for p in payloads]


def test_every_python_block_of_the_readme_is_valid_python():
    """TensorFlow's block included, which is not run here (TensorFlow is too heavy for the tests)."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert len(blocks) >= 8
    for block in blocks:
        compile(block, "README.md", "exec")


# ------------------------------------------------------------------------------------------
# the README and docs/ hold together
# ------------------------------------------------------------------------------------------

def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading).strip().lower()
    text = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    seen: dict[str, int] = {}
    found = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", text, re.M):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    return re.findall(r"\]\(([^)\s]+)\)", text)


@pytest.mark.parametrize("page", [README, REPO / "CHANGELOG.md", *DOCS], ids=lambda p: p.name)
def test_every_relative_link_and_anchor_resolves(page):
    for link in links(page):
        if re.match(r"[a-z]+:", link):
            continue  # a web address
        target, _, anchor = link.partition("#")
        path = (page.parent / target).resolve() if target else page
        assert path.exists(), f"{page.name}: link {link!r} points at nothing"
        assert REPO in path.parents or path == REPO, f"{page.name}: link {link!r} leaves the repository"
        if anchor and path.suffix == ".md":
            assert anchor in anchors(path), f"{page.name}: link {link!r}: no such heading in {path.name}"


def test_readme_is_short_with_a_table_of_contents_of_every_section():
    text = README.read_text(encoding="utf-8")
    assert len(text.encode()) < MAX_README_BYTES, f"README.md is {len(text.encode())} bytes"
    toc = text[text.index("## Contents"):]
    toc = toc[:toc.index("\n## ", 1)]
    listed = re.findall(r"\]\(#([^)]+)\)", toc)
    sections = [slug(h) for h in re.findall(r"^## +(.+)$", re.sub(r"```.*?```", "", text, flags=re.S), re.M)]
    assert set(listed) <= anchors(README)
    assert [s for s in sections if s != "contents"] == [a for a in listed if a in sections]
    for page in ("s3", "docker", "multi-host", "file-mode", "validate-and-from-job", "ci", "troubleshooting",
                 "observability", "speed", "guarantees", "architecture"):
        assert f"](docs/{page}.md)" in text, f"README.md does not link docs/{page}.md"


def test_no_page_refers_to_a_design_file_that_is_not_there():
    for page in [README, *DOCS]:
        assert "DESIGN.md" not in page.read_text(encoding="utf-8"), page.name
