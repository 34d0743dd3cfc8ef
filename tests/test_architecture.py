"""The package's house rules, read from its source: no import cycle (every import counts, a
lazy one inside a function too: it is a dependency all the same), no code outside
erasure/worlds/ that asks whether a model is MiniSD, and no 'session' wording in the docs."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "erasure"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package modules `path` imports (absolute or relative, at any depth of the file)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from P import m` with m a submodule imports P.m, as `from P.m import y` does; P itself
            # only where a name is an attribute of P
            names = [f"{base}.{a.name}" for a in node.names]
            targets = [t for t in names if t in modules]
            if len(targets) < len(names):
                targets.append(base)
        else:
            continue
        for t in targets:
            # `from . import x` names a submodule x, or an attribute of the package itself
            while t and t not in modules:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {m: imports_of(p, set(files)) for m, p in files.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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

    import sys
    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_sees_a_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_the_package_has_no_import_cycle():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


# ----------------------------------------------------------------------------- MiniSD stays in its world

WORLDS = PACKAGE / "worlds"
# the MiniSD classifier is a detector (judges/) that reads that world's images with its network
MINI_IMPORT_ALLOWED = {PACKAGE / "judges" / "minisd.py"}
# asking whether a model is MiniSD, or reaching for its vocabulary, outside erasure/worlds/
MINI_WORDS = re.compile(r"\bis_minisd\b|\bself\.minisd\b|\bminisd\s*=|\bminisd_defaults\b|"
                        r"\bparse_caption\b|\bOBJECTS\b|\bCOLORS\b|\bSTYLES\b|\bmini_\w+\(")


STRINGS = re.compile(r'"[^"]*"|\'[^\']*\'')


def mini_leaks(path: Path, graph_name: str | None = None) -> list[str]:
    """Lines of `path` (outside erasure/worlds/) that import MiniSD's world or branch on MiniSD."""
    found = []
    tree = ast.parse(path.read_text(encoding="utf-8"))
    graph_name = graph_name or module_name(path)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and path not in MINI_IMPORT_ALLOWED:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if isinstance(node, ast.ImportFrom) and node.level:
                package = graph_name.split(".")[: len(graph_name.split(".")) - node.level + (path.name == "__init__.py")]
                names = [".".join(package + ([node.module] if node.module else []))]
            if any(n.startswith("erasure.worlds.mini") for n in names):
                found.append(f"{graph_name}:{node.lineno}: imports {names[0]}")
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        code = STRINGS.sub('""', line).split("#", 1)[0]  # code, not its strings (help texts name the default model)
        if MINI_WORDS.search(code) and path not in MINI_IMPORT_ALLOWED:
            found.append(f"{graph_name}:{i}: {line.strip()}")
    return found


def test_the_leak_finder_sees_a_minisd_branch(tmp_path):
    bad = tmp_path / "probe.py"
    bad.write_text("from ..worlds.mini.world import parse_caption\nif is_minisd(path):\n    pass\n")
    assert len(mini_leaks(bad, "erasure.trainers.probe")) == 3
    bad.write_text("from ..worlds import world_for\nif world_for(path).attribute(c):\n    pass\n")
    assert mini_leaks(bad, "erasure.trainers.probe") == []


def test_no_code_outside_worlds_branches_on_minisd():
    leaks = [leak for p in sorted(PACKAGE.rglob("*.py")) if WORLDS not in p.parents for leak in mini_leaks(p)]
    assert not leaks, "MiniSD knowledge outside erasure/worlds/ (ask world_for(model) instead):\n" + "\n".join(leaks)


# ----------------------------------------------------------------------------- product docs

SESSION = re.compile(r"\bsessions?\b", re.IGNORECASE)
DOC_SUFFIXES = {".md", ".json", ".html", ".txt", ".csv", ".yaml"}


def docstrings(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                out.append((getattr(node, "lineno", 1), doc))
    return out


def test_docs_and_docstrings_never_speak_of_sessions():
    hits = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*"))]:
        if path.is_file() and path.suffix in DOC_SUFFIXES:
            for i, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
                if SESSION.search(line):
                    hits.append(f"{path.relative_to(ROOT)}:{i}")
    for path in sorted(PACKAGE.rglob("*.py")):
        for lineno, doc in docstrings(path):
            if SESSION.search(doc):
                hits.append(f"{path.relative_to(ROOT)}:{lineno} (docstring)")
    assert not hits, "'session' wording (say what the part does now; history goes to docs/experiments/ by date):\n" \
        + "\n".join(hits)


# ----------------------------------------------------------------------------- layers (docs/architecture.md)

LAYERS = [  # top first; a module imports only from its own layer or the layers below
    ("faces", ["erasure", "erasure.cli", "erasure.__main__", "erasure.demo"]),  # `erasure` itself: the public API the faces use
    ("bench", ["erasure.bench"]),
    ("eval", ["erasure.eval", "erasure.estimate"]),  # the estimator runs the methods on fake tensors
    ("methods", ["erasure.trainers", "erasure.attacks"]),
    ("config", ["erasure.config"]),  # from_dict asks the base model's world for its defaults
    ("worlds", ["erasure.worlds"]),
    ("judges", ["erasure.judges"]),
    ("pipelines", ["erasure.pipelines"]),
    ("format", ["erasure.erasure_files", "erasure.lora", "erasure.importing", "erasure.outdir", "erasure.model_ref", "erasure.selfdata", "erasure.images"]),
    ("leaves", ["erasure.registry", "erasure.plugins", "erasure.targets", "erasure.sampling", "erasure.files",
                "erasure.prompt_files", "erasure.errors", "erasure.version", "erasure.memory", "erasure.distributed",
                "erasure.harness"]),
]
# the MiniSD classifier (a detector) is built from MiniSD's network and label vocabulary, two
# torch-only modules of its world that import nothing else of the package
LAYER_EXCEPTIONS = {("erasure.judges.minisd", "erasure.worlds.mini.nets"),
                    ("erasure.judges.minisd", "erasure.worlds.mini.world")}


def layer_of(module: str) -> int | None:
    best = None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            below = module.startswith(p + ".") and p != "erasure"  # the package itself: its __init__ only
            if (module == p or below) and (best is None or len(p) > best[1]):
                best = (i, len(p))
    return best[0] if best else None


def test_every_module_has_a_layer_and_imports_only_downwards():
    graph = import_graph()
    unplaced = sorted(m for m in graph if layer_of(m) is None)
    assert not unplaced, f"modules in no layer of docs/architecture.md: {unplaced}"
    upward = [f"{m} ({LAYERS[layer_of(m)][0]}) imports {d} ({LAYERS[layer_of(d)][0]})"
              for m, deps in sorted(graph.items()) for d in sorted(deps)
              if layer_of(d) < layer_of(m) and (m, d) not in LAYER_EXCEPTIONS]
    assert not upward, "imports against the layers:\n" + "\n".join(upward)
    for m, d in LAYER_EXCEPTIONS:  # the exceptions stay true (or are taken out of the list)
        assert d in graph[m] and graph[d] <= {target for _, target in LAYER_EXCEPTIONS}, (m, d, graph[d])


def test_layers_are_read_by_the_longest_prefix():
    names = [name for name, _ in LAYERS]
    assert names[layer_of("erasure.eval.metrics.fid")] == "eval"
    assert names[layer_of("erasure.worlds.mini.concepts")] == "worlds"
    assert names[layer_of("erasure.cli")] == "faces" and names[layer_of("erasure.version")] == "leaves"
    assert layer_of("erasure.configurations") is None  # a prefix is a whole module name, not a string start
    assert layer_of("erasure.bench.run") < layer_of("erasure.eval.runner") < layer_of("erasure.pipelines.loading")
