"""The house rules of docs/architecture.md, checked on the source: which room may import which,
no import cycle (function-level imports count), and a reason at the top of any long module."""

from __future__ import annotations

import ast
from pathlib import Path

import harmonixr

SRC = Path(harmonixr.__file__).parent
BASE = {"_files", "_pool", "_plotstyle"}  # internal helpers, importing no room
# what each room may import besides itself (docs/architecture.md, "Rooms and their imports")
ALLOWED: dict[str, set[str]] = {
    "_files": set(),
    "_pool": set(),
    "_plotstyle": set(),
    "model": BASE,
    "midi": BASE,
    "data": BASE | {"midi"},
    "train": BASE | {"midi", "data", "model"},
    "evaluate": BASE | {"midi", "data", "model", "train"},
    "search": BASE | {"midi", "data", "model", "train", "evaluate"},
    "viz": BASE | {"midi", "data", "model", "train", "evaluate", "search"},
    "results": BASE | {"midi"},
    "api": BASE | {"midi", "data", "model", "train", "evaluate", "search", "results"},
    "serve": BASE
    | {"midi", "data", "model", "train", "evaluate", "search", "viz", "results"}
    | {"api"},
    "cli": BASE
    | {"midi", "data", "model", "train", "evaluate", "search", "viz", "results", "api", "serve"},
    "__init__": {"midi", "api", "results"},
}
LEAVES = {"harmonixr.evaluate.metrics"}  # pure numpy: any room may use them
LONG = 400


def module_graph(package: Path) -> dict[str, set[str]]:
    """Each module of ``package`` → the package's modules it imports anywhere in its body
    (function-level and ``TYPE_CHECKING`` imports included, relative ones resolved). Importing
    ``a.b.c`` also runs ``a/b/__init__.py``, so the sub-packages on the way count too; the
    top package itself is ``top`` (what is taken from it is checked apart)."""
    top = package.name
    names = {}
    for f in package.rglob("*.py"):
        parts = f.relative_to(package.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        names[name] = f

    def owner(dotted: str) -> str:
        while dotted not in names and "." in dotted:
            dotted = dotted.rsplit(".", 1)[0]
        return dotted if dotted in names else ""

    def with_packages(module: str, importer: str) -> set[str]:
        """``module`` and the packages importing it initialises: those on its path that do
        not already hold the importer (they were initialised before the importer ran)."""
        parts, mine = module.split("."), importer.split(".")
        chain = {".".join(parts[:k]) for k in range(2, len(parts) + 1)} & set(names)
        return {m for m in chain if m == module or mine[: m.count(".") + 1] != m.split(".")}

    graph: dict[str, set[str]] = {}
    for name, f in names.items():
        is_package = f.name == "__init__.py"
        deps: set[str] = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's own package upwards
                    here = name.split(".") if is_package else name.split(".")[:-1]
                    here = here[: len(here) - (node.level - 1)]
                    base = ".".join([*here, base] if base else here)
                if base.split(".")[0] == top:
                    for a in node.names:
                        deps |= with_packages(owner(f"{base}.{a.name}") or base, name)
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] == top:
                        deps |= with_packages(owner(a.name), name)
        graph[name] = deps - {name, ""}
    # a package whose __init__ imports nothing costs its importers nothing
    empty = {m for m, f in names.items() if f.name == "__init__.py" and not graph[m]}
    return {m: d - (empty - {m}) for m, d in graph.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_the_checker_follows_relative_imports_and_package_inits(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "a").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "__init__.py").write_text("from pkg.b import f\n")
    (pkg / "a" / "x.py").write_text("from ..c import g\nfrom . import y\n")
    (pkg / "a" / "y.py").write_text("")
    (pkg / "b.py").write_text("import pkg.a.y\n")
    (pkg / "c.py").write_text("")
    graph = module_graph(pkg)
    assert graph["pkg.a.x"] == {"pkg.c", "pkg.a.y"}  # its own package ran before it
    assert graph["pkg.b"] == {"pkg.a", "pkg.a.y"}  # importing pkg.a.y runs pkg/a/__init__.py
    # b imports pkg.a.y, which runs pkg/a/__init__.py, which imports b: a cycle
    assert cycles(graph) == [["pkg.a", "pkg.b"]]


def test_modules_take_nothing_from_the_top_package_but_its_version():
    taken = []
    for f in SRC.rglob("*.py"):
        if f.parent == SRC and f.name == "__init__.py":
            continue
        text = f.read_text()
        if "import_module(" in text or "__import__(" in text:
            taken.append(f"{f.relative_to(SRC)}: imports by name")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == "harmonixr":
                taken += [f"{f.relative_to(SRC)}: {a.name}" for a in node.names]
    assert all(t.endswith(": __version__") for t in taken), taken


def test_the_checker_finds_a_hidden_cycle_and_follows_from_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "a").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "__init__.py").write_text("")
    (pkg / "a" / "x.py").write_text("from pkg.b import y\n")
    (pkg / "b.py").write_text("def f():\n    from pkg.a.x import thing\n")
    (pkg / "c.py").write_text("import pkg.b\n")
    graph = module_graph(pkg)
    assert graph["pkg.a.x"] == {"pkg.b"} and graph["pkg.c"] == {"pkg.b"}
    assert cycles(graph) == [["pkg.a.x", "pkg.b"]]


def test_no_import_cycle():
    assert cycles(module_graph(SRC)) == []


def test_rooms_import_only_the_rooms_below_them():
    wrong = []
    for module, deps in module_graph(SRC).items():
        if module in LEAVES and deps:
            wrong.append(f"{module} (a leaf) imports {sorted(deps)}")
        mine = room(module)
        for dep in deps:
            if dep in LEAVES or room(dep) == mine or dep == "harmonixr":
                continue
            if room(dep) not in ALLOWED[mine]:
                wrong.append(f"{module} imports {dep}")
    assert not wrong, "\n".join(wrong)


def test_every_room_is_in_the_rules():
    assert {room(m) for m in module_graph(SRC)} <= set(ALLOWED)


def test_a_long_module_says_why_it_is_one():
    silent = []
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text()
        doc = ast.get_docstring(ast.parse(text)) or ""
        if text.count("\n") > LONG and f"over {LONG} lines" not in doc:
            silent.append(f"{path.relative_to(SRC)}: {text.count(chr(10))} lines")
    assert not silent, "long modules without a reason at the top: " + ", ".join(silent)
