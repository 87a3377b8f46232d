"""The package's layering: no import cycle, imports only downward, no module too long to read."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[2] / "rtdecode"

# A folder's rank: a module may import modules of its own folder or of a lower rank, never upward
# and never sideways into another folder of the same rank (docs/architecture.md).
RANKS = {
    "": 0,  # rtdecode/*.py: errors, volume, config, progress
    "numerics": 0.5,  # kernels, statistics, geometry: may raise rtdecode's errors, nothing else
    "wire": 1,
    "transport": 2,
    "scanner": 2,
    "models": 2,
    "io": 2,
    "sim": 2,
    "pipeline": 3,
    "offline": 4,
    "apps": 5,
}
TOP = {"rtdecode.cli": 6, "rtdecode.__main__": 7}
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    mods = {}
    for p in PACKAGE.rglob("*.py"):
        name = ".".join(("rtdecode", *p.relative_to(PACKAGE).with_suffix("").parts))
        mods[name.removesuffix(".__init__")] = p
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for t in targets:
            while t and t not in mods:
                t = t.rpartition(".")[0]
            if t and t != name and t != "rtdecode":
                out.add(t)
    return out


def _folder(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in RANKS) else ""


def _rank(name: str) -> int:
    return TOP.get(name, RANKS[_folder(name)])


def test_imports_run_only_downward_and_form_no_cycle():
    mods = _modules()
    graph = {n: _imports(n, p, mods) for n, p in mods.items()}
    upward = [
        f"{a} -> {b}"
        for a, targets in graph.items()
        for b in targets
        if not (_folder(a) == _folder(b) and a not in TOP) and _rank(b) >= _rank(a)
    ]
    assert not upward, "imports that run upward or sideways between layers:\n" + "\n".join(sorted(upward))

    def reaches(a, b, seen):
        return a == b or any(reaches(c, b, seen) for c in graph[a] if c not in seen and not seen.add(c))

    cycles = sorted({tuple(sorted((a, b))) for a in graph for b in graph[a] if reaches(b, a, set())})
    assert not cycles, f"import cycles: {cycles}"


def test_every_folder_has_a_rank_and_no_module_is_too_long():
    mods = _modules()
    assert {_folder(n) for n in mods} <= set(RANKS)
    long = {n: len(p.read_text().splitlines()) for n, p in mods.items()}
    assert not {n: k for n, k in long.items() if k > MAX_LINES}, "split these modules at their seams"
