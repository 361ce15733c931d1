"""The pipeline's stages depend on the value types in chunks.py, never on one another."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "sagemaker_pipe"

# stage -> its files; a stage may import chunks, errors and itself, none of the other stages
STAGES = {
    "sources": sorted((PACKAGE / "sources").glob("*.py")),
    "transforms": [PACKAGE / "transforms.py"],
    "sink": [PACKAGE / "fifo.py"],
}
MODULES = {"sources": "sagemaker_pipe.sources", "transforms": "sagemaker_pipe.transforms",
           "sink": "sagemaker_pipe.fifo"}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_stages_import_chunks_and_not_one_another() -> None:
    for stage, files in STAGES.items():
        assert files, stage
        others = [m for s, m in MODULES.items() if s != stage]
        uses_chunks = False
        for path in files:
            imported = _imports(path)
            uses_chunks |= "sagemaker_pipe.chunks" in imported
            bad = sorted(i for i in imported for m in others if i == m or i.startswith(m + "."))
            assert not bad, f"{path.name} ({stage}) imports {bad}"
        assert uses_chunks, f"{stage} does not take its value types from chunks.py"


def test_the_value_types_live_in_chunks_alone() -> None:
    for name in ("class FileSpan", "class PipeSpan", "class ObjectRef", "SinkChunk =", "Chunk ="):
        homes = [p.name for p in PACKAGE.rglob("*.py") if f"\n{name}" in p.read_text()]
        assert homes == ["chunks.py"], (name, homes)
