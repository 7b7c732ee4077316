"""The house rules of docs/architecture.md, checked on the source: which room may import which,
no import cycle (function-level imports count), no private name taken from another module, no
module over 450 lines and a reason at the top of any module over 400."""

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
    "search": BASE | {"midi", "data", "model", "train", "evaluate", "results"},
    "experiments": BASE | {"midi", "data", "model", "train", "evaluate"},
    "viz": BASE | {"midi", "data", "model", "train", "evaluate", "search"},
    "results": BASE | {"midi"},
    "api": BASE | {"midi", "data", "model", "train", "evaluate", "search", "results"},
    "serve": BASE
    | {"midi", "data", "model", "train", "evaluate", "search", "viz", "results"}
    | {"api", "__init__"},  # __init__: its __version__ only (checked below)
    "cli": BASE
    | {"midi", "data", "model", "train", "evaluate", "search", "viz", "results", "api", "serve"}
    | {"experiments", "__init__"},
    "__init__": {"midi", "api", "results"},
}
LEAVES = {"harmonixr.evaluate.metrics"}  # pure numpy: any room may use them
LONG, MAX_LINES = 400, 450
REASON = f"One module, over {LONG} lines:"


def module_graph(package: Path, packages: bool = True) -> dict[str, set[str]]:
    """Each module of ``package`` → the package's modules it imports anywhere in its body
    (function-level and ``TYPE_CHECKING`` imports included, relative ones resolved). Importing
    ``a.b.c`` also runs ``a/__init__.py`` and ``a/b/__init__.py``, so the packages on the way
    count too, except those holding the importer (they ran before it); ``packages=False``
    keeps only the modules named (what the room rules judge). The top package's ``__init__``
    also depends on every module it names in a string (what it imports lazily)."""
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
        parts, mine = module.split("."), importer.split(".")
        if not packages:
            return {module}
        chain = {".".join(parts[:k]) for k in range(1, len(parts) + 1)} & set(names)
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
            elif name == top and isinstance(node, ast.Constant) and node.value in names:
                deps.add(node.value)
        graph[name] = deps - {name, ""}
    return graph


def without_empty_inits(graph: dict[str, set[str]], package: Path) -> dict[str, set[str]]:
    """The graph less the packages whose ``__init__`` imports nothing: importing one runs no
    code of the package, so it cannot close a cycle."""
    top = package.name
    inits = {
        ".".join(f.relative_to(package.parent).parts[:-1])
        for f in package.rglob("__init__.py")
        if f.parent != package or top
    }
    empty = {m for m in inits if not graph.get(m)}
    return {m: d - empty for m, d in graph.items() if m not in empty}


def imports_by_name(tree: ast.AST) -> bool:
    """Whether the code imports modules from strings (``importlib.import_module``,
    ``__import__``), which no import statement shows."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            called = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            if called in ("import_module", "__import__"):
                return True
        if (
            isinstance(node, ast.ImportFrom)
            and node.module == "importlib"
            and any(a.name == "import_module" for a in node.names)
        ):
            return True
    return False


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
        tree = ast.parse(f.read_text())
        where = f.relative_to(SRC)
        if imports_by_name(tree):
            taken.append(f"{where}: imports by name")
        depth = len(where.parts)  # a relative import this many levels up reaches the top
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                taken += [f"{where}: import {a.name}" for a in node.names if a.name == "harmonixr"]
            elif isinstance(node, ast.ImportFrom) and (
                (node.level == 0 and node.module == "harmonixr")
                or (node.level == depth and not node.module)
            ):
                taken += [f"{where}: {a.name}" for a in node.names]
    assert all(t.endswith(": __version__") for t in taken), taken


def test_the_checker_sees_the_top_package_and_imports_by_name(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "low").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from pkg.low.x import f\n_LAZY = {'g': 'pkg.high'}\n")
    (pkg / "low" / "__init__.py").write_text("")
    (pkg / "low" / "x.py").write_text("def f():\n    from .. import g\n")
    (pkg / "high.py").write_text("import importlib as il\nm = il.import_module('pkg.low.x')\n")
    graph = module_graph(pkg)
    assert graph["pkg"] == {"pkg.low", "pkg.low.x", "pkg.high"}  # eager and lazy
    assert graph["pkg.low.x"] == {"pkg"}  # a relative import of the top package
    assert cycles(without_empty_inits(graph, pkg)) == [["pkg", "pkg.low.x"]]
    assert imports_by_name(ast.parse((pkg / "high.py").read_text()))
    assert not imports_by_name(ast.parse("import importlib\n"))


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
    assert cycles(without_empty_inits(module_graph(SRC), SRC)) == []


def test_rooms_import_only_the_rooms_below_them():
    wrong = []
    for module, deps in module_graph(SRC, packages=False).items():
        if module in LEAVES and deps:
            wrong.append(f"{module} (a leaf) imports {sorted(deps)}")
        mine = room(module)
        for dep in deps:
            if dep in LEAVES or room(dep) == mine:
                continue
            if room(dep) not in ALLOWED[mine]:
                wrong.append(f"{module} imports {dep}")
    assert not wrong, "\n".join(wrong)


def test_every_room_is_in_the_rules():
    assert {room(m) for m in module_graph(SRC)} <= set(ALLOWED)


# modules of other rooms' current work still over the limit: each waiver must still be needed
# (the test fails once the module is short enough, so that the waiver goes too)
WAIVED: dict[str, str] = {}  # module → why it is still long


def length_problem(text: str) -> str | None:
    """Why a module's length breaks the rules, or None: over ``MAX_LINES`` lines it is too long
    whatever it says; over ``LONG`` its docstring needs a paragraph starting with ``REASON``
    that goes on to give a reason (a dozen words or more: what would drift apart if split)."""
    lines = text.count("\n")
    if lines > MAX_LINES:
        return f"{lines} lines, over the limit of {MAX_LINES}"
    if lines <= LONG:
        return None
    doc = ast.get_docstring(ast.parse(text)) or ""
    paragraph = next((p for p in doc.split("\n\n") if p.strip().startswith(REASON)), "")
    reason = " ".join(paragraph.split())[len(REASON) :].split()
    if not paragraph:
        return f"{lines} lines and no paragraph starting {REASON!r}"
    if len(reason) < 12:
        return f"{lines} lines and a reason of {len(reason)} words"
    return None


def test_the_length_rule_can_fail():
    body = "\n".join(f"x{i} = {i}" for i in range(420)) + "\n"
    bare = f'"""Does things.\n\n{REASON} it is one."""\n' + body
    assert "a reason of 3 words" in length_problem(bare)
    # the phrase anywhere else is not a reason
    elsewhere = f'"""Does things. This module is not {REASON[:-1].lower()}."""\n' + body
    assert "no paragraph" in length_problem(elsewhere)
    good = (
        f'"""Does things.\n\n{REASON} ``fit`` writes what ``Model`` reads, and the two share '
        'one file format that would drift apart if they were split."""\n' + body
    )
    assert length_problem(good) is None
    huge = good + "\n".join(f"y{i} = {i}" for i in range(40)) + "\n"
    assert "over the limit" in length_problem(huge)
    assert length_problem("x = 1\n") is None


def test_no_module_is_too_long_and_a_long_one_says_why_it_is_one():
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        name = str(path.relative_to(SRC))
        why = length_problem(path.read_text())
        if why and name not in WAIVED:
            problems.append(f"{name}: {why}")
        elif name in WAIVED and (not why or "over the limit" not in why):
            problems.append(f"{name}: waived, but no longer over {MAX_LINES} lines: drop it")
    assert not problems, "\n".join(problems)


def private_imports(package: Path) -> list[str]:
    """Private names (``_x``, not dunders) a module of ``package`` takes from another module of
    it: by ``from … import _x``, or as ``module._x`` of a module it imported."""
    top = package.name
    found = []
    for f in sorted(package.rglob("*.py")):
        tree = ast.parse(f.read_text())
        where = f.relative_to(package)
        aliases: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (
                node.level or (node.module or "").split(".")[0] == top
            ):
                for a in node.names:
                    if a.name.startswith("_") and not a.name.startswith("__"):
                        found.append(f"{where}: {a.name} from {node.module or '.'}")
                    aliases.add(a.asname or a.name)  # a module imported from its package
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] == top:
                        aliases.add(a.asname or a.name.split(".")[0])
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and isinstance(node.value, ast.Name | ast.Attribute)
                and ast.unparse(node.value).split(".")[0] in aliases
                and ast.unparse(node.value).split(".")[0] != "self"
            ):
                found.append(f"{where}: {ast.unparse(node)}")
    return found


def test_the_private_name_checker_sees_both_ways(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("_hidden = 1\nshown = 2\n")
    (pkg / "b.py").write_text("from pkg.a import _hidden, shown\nfrom . import a\nx = a._hidden\n")
    (pkg / "c.py").write_text("from pkg.a import shown\nfrom ._util import helper\n")
    assert private_imports(pkg) == ["b.py: _hidden from pkg.a", "b.py: a._hidden"]


def test_no_module_takes_a_private_name_from_another():
    assert private_imports(SRC) == []
