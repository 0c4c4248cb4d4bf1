"""The import graph: layers that only point down, and no cycle between modules or folders.

Every `import` in the source folders counts, including the lazy ones inside functions (a lazy import is
still an arrow: it only hides the cycle until run time). The layers, lowest first (a module may import
its own package, any lower layer, and nothing else):

    0  avatar (root), avatar.errors, avatar.core      shared facts: audio, landmarks, dataset format, camera, io
    0  cuda_ext                                       the kernels (import nothing of avatar)
    1  avatar.features                                audio -> feature rows (shared by preprocess and engine)
    2  avatar.preprocess   (preprocess/)              video -> dataset
    2  avatar.model                                   Gaussians, deformation networks
    3  avatar.engine                                  the one inference engine
    4  avatar.evaluation                              metrics, held-out eval, lip sync
    5  avatar.train, avatar.viewer (viewer/)          training; the interactive viewer
    6  avatar.testing                                 fixtures (tiny datasets and trained runs)
    6  avatar.batch                                   bulk speak / fit on local or cluster Ray
    6  avatar.serve                                   live avatar server (WebRTC, HTTP API)
    7  avatar.commands, avatar.cli                    the CLI

Two packages on the same layer do not import each other (preprocess <-> model, train <-> viewer,
testing <-> batch <-> serve).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# source folder -> installed package name (setup.py's package_dir)
FOLDERS = {"avatar": "avatar", "preprocess": "avatar.preprocess", "viewer": "avatar.viewer", "cuda_ext": "cuda_ext"}

LAYERS = [  # (package prefix, layer); the longest matching prefix wins
    ("avatar", 0), ("avatar.errors", 0), ("avatar.core", 0), ("cuda_ext", 0),
    ("avatar.features", 1),
    ("avatar.preprocess", 2), ("avatar.model", 2),
    ("avatar.engine", 3),
    ("avatar.evaluation", 4),
    ("avatar.train", 5), ("avatar.viewer", 5),
    ("avatar.testing", 6), ("avatar.batch", 6), ("avatar.serve", 6),
    ("avatar.commands", 7), ("avatar.cli", 7),
]


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT)
    parts = list(rel.with_suffix("").parts)
    parts[0] = FOLDERS[parts[0]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    mods = {}
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if "static" in path.parts:
                continue
            mods[_module_name(path)] = path
    return mods


def _compiled(pkg: str, name: str) -> bool:
    """Whether `pkg.name` is a compiled extension module in its source folder (e.g. cuda_ext._C)."""
    folder = {v: k for k, v in FOLDERS.items()}.get(pkg)
    return folder is not None and any((ROOT / folder).glob(name + ".*.so"))


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules imported anywhere in the file (top level or inside functions)."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # `from pkg import sub` imports the submodule (a .py, a package or a compiled extension);
            # `from pkg import name` of anything else is an arrow to pkg itself
            subs = [a.name for a in node.names if f"{mod}.{a.name}" in known or _compiled(mod, a.name)]
            targets = [f"{mod}.{n}" for n in subs] + ([mod] if len(subs) < len(node.names) else [])
        for t in targets:
            if _compiled(*t.rpartition(".")[::2]):
                continue  # a compiled extension is a leaf
            # the longest known module that t names or lives in
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def _package(mod: str) -> tuple[str, int]:
    best = max((p for p, _ in LAYERS if mod == p or mod.startswith(p + ".")), key=len)
    return best, dict(LAYERS)[best]


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = _sources()
    known = set(mods)
    return {m: _imports(m, p, known) for m, p in mods.items()}


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v, counter=[0]):  # noqa: B006 - a shared counter
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(edges):
        if v not in index:
            visit(v)
    return out


def test_the_walker_sees_known_arrows(graph):
    # facts of the tree, independent of the layer table: the training loop uses the model package,
    # the speak command the engine, and preprocessing's masks the shared landmark sets
    assert any(m.startswith("avatar.model") for m in graph["avatar.train.trainer"])
    assert any(m.startswith("avatar.engine") for m in graph["avatar.commands.speak"])
    assert "avatar.core.landmarks" in graph["avatar.preprocess.masks"]


def test_no_arrow_against_the_layers(graph):
    bad = []
    for src, dsts in graph.items():
        sp, sl = _package(src)
        for dst in sorted(dsts):
            dp, dl = _package(dst)
            if dp == sp or dp in ("avatar", "avatar.errors"):  # own package; the root and its error type
                continue
            if dl >= sl:
                bad.append(f"{src} (layer {sl}) -> {dst} (layer {dl})")
    assert not bad, "imports against the layers:\n" + "\n".join(bad)


def test_cuda_ext_imports_nothing_of_avatar(graph):
    bad = [f"{s} -> {d}" for s, ds in graph.items() if s.startswith("cuda_ext") for d in ds
           if not d.startswith("cuda_ext")]
    assert not bad, bad


def test_no_module_cycle(graph):
    assert not _cycles(graph), f"import cycles between modules: {_cycles(graph)}"


def test_no_folder_cycle(graph):
    folders: dict[str, set[str]] = {}
    for src, dsts in graph.items():
        sp = _package(src)[0]
        folders.setdefault(sp, set()).update(_package(d)[0] for d in dsts if _package(d)[0] != sp)
    assert not _cycles(folders), f"import cycles between folders: {_cycles(folders)}"


def test_only_the_cli_imports_the_cli(graph):
    bad = [f"{s} -> {d}" for s, ds in graph.items() for d in ds
           if _package(d)[0] in ("avatar.commands", "avatar.cli") and _package(s)[0] not in ("avatar.commands", "avatar.cli")]
    assert not bad, bad
