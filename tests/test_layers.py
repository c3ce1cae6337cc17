"""The architecture as a test: the layers the README's Development section describes,
checked on the import graph of hookd/ (static, with ast: function-level imports count).

A change that makes the policy read XML, a framing module learn of policy, two modules
import each other, or a module grow past what one person reads at once fails here,
naming the import or the file.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "hookd"
#: "No module over ~400 lines" (architecture v2); a little slack for a docstring.
MAX_LINES = 420

#: module (or package prefix) -> the hookd modules it may import, and nothing else.
#: Framing and pure logic sit at the bottom: they know only the exception root.
ALLOWED = {
    "hookd.errors": set(),
    "hookd.clock": set(),
    "hookd.policy": {"hookd.errors", "hookd.policy"},
    "hookd.xml": {"hookd.errors", "hookd.policy.model", "hookd.xml"},
    "hookd.ipc.wire": {"hookd.errors"},
    # shimwire shares the XML size limit with the parser (libvirt's RPC message limit).
    "hookd.hookpath.shimwire": {"hookd.errors", "hookd.xml.safe"},
    "hookd.rpc.frame": {"hookd.errors"},
    "hookd.rpc.xdr": {"hookd.errors", "hookd.rpc.frame"},
    "hookd.ledger": {"hookd.errors"},
    # The compliance report folds audit rows and last boots: pure, like the ledger it uses.
    "hookd.report": {"hookd.errors", "hookd.ledger"},
    # Metrics are counted from every layer, so they import nothing above them; only the
    # exporter binds its socket as hookd binds the others.
    "hookd.metrics": {"hookd.errors", "hookd.metrics"},
    "hookd.metrics.exporter": {"hookd.errors", "hookd.metrics", "hookd.ipc.listener"},
}
#: Only these may talk to libvirt (the worker process and the read-only commands).
LIBVIRT_CLIENTS = ("hookd.virt", "hookd.cli")


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts)
        if name.endswith(".__init__"):
            name = name[: -len(".__init__")]
        yield name, path


def imports(path: pathlib.Path):
    """(module imported, line) for every import in the file, function-level ones included."""
    tree = ast.parse(path.read_text())
    known = {n for n, _ in modules()}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                yield (full if full in known else node.module), node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno


def graph():
    return {name: {m for m, _ in imports(path) if m.startswith("hookd")} for name, path in modules()}


def rule_for(name: str):
    best = None
    for prefix in ALLOWED:
        if name == prefix or name.startswith(prefix + "."):
            if best is None or len(prefix) > len(best):
                best = prefix
    return best


def allowed(target: str, permitted: set) -> bool:
    return target == "hookd" or any(target == p or target.startswith(p + ".") for p in permitted)


@pytest.mark.parametrize("name,path", list(modules()), ids=[n for n, _ in modules()])
def test_module_imports_only_its_layer(name, path):
    rule = rule_for(name)
    for target, line in imports(path):
        if target == "lxml" or target.startswith("lxml."):
            assert name.startswith("hookd.xml."), f"{path}:{line}: only hookd.xml parses XML (imports lxml)"
        if target == "libvirt" or target.startswith("libvirt"):
            assert name.startswith(LIBVIRT_CLIENTS), f"{path}:{line}: {name} is not a libvirt client"
        if rule is not None and target.startswith("hookd"):
            assert allowed(target, ALLOWED[rule]), f"{path}:{line}: {name} ({rule} layer) imports {target}"


def test_no_import_circle():
    g = graph()
    seen, stack, on_stack, cycles = {}, [], set(), []

    def visit(v):
        seen[v] = True
        stack.append(v)
        on_stack.add(v)
        for w in sorted(g.get(v, ())):
            if w == v or w not in g:
                continue
            if w in on_stack:
                cycles.append(stack[stack.index(w):] + [w])
            elif w not in seen:
                visit(w)
        stack.pop()
        on_stack.discard(v)
    for v in sorted(g):
        if v not in seen:
            visit(v)
    # A package's __init__ importing its own submodule is not a circle of two modules.
    real = [c for c in cycles if not all(m == c[0] or m.startswith(c[0] + ".") or c[0].startswith(m + ".")
                                         for m in c)]
    assert not real, "import circles: " + "; ".join(" -> ".join(c) for c in real)


@pytest.mark.parametrize("name,path", list(modules()), ids=[n for n, _ in modules()])
def test_module_is_short_enough_to_read(name, path):
    n = len(path.read_text().splitlines())
    assert n <= MAX_LINES, f"{path}: {n} lines; split it by what it owns (see the README's Development section)"


@pytest.mark.parametrize("name,path", list(modules()), ids=[n for n, _ in modules()])
def test_module_says_what_it_owns(name, path):
    doc = ast.get_docstring(ast.parse(path.read_text()))
    assert doc and len(doc) > 40, f"{path}: no docstring saying what it owns and what it must not do"


def test_test_modules_share_helpers_only_through_the_harness():
    """A test module never imports another test module or a conftest: what tests share
    lives in tests/harness (README, Development), so running one file never depends on
    another file's fixtures or order."""
    tests_dir = PACKAGE.parent / "tests"
    offenders = []
    for path in sorted(tests_dir.rglob("*.py")):
        rel = path.relative_to(tests_dir.parent)
        if rel.parts[:2] == ("tests", "harness"):
            continue
        for name, line in imports(path):
            if name.startswith("tests.") and not name.startswith("tests.harness"):
                offenders.append(f"{rel}:{line}: imports {name}")
    assert offenders == []

