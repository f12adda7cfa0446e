"""The package's shape: no import circles, no imports hidden in functions, nothing imports web/,
no module or class too big to read at once, Lua and Redis errors each in their one place.

The core (line, service, workers, upstream adapters, log) is usable without
the web layer; only the entry points (``guestqueue/__init__.py``, ``cli.py``)
put the two together.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from guestqueue.lines.redis.keys import SCRIPT_NAMES
from guestqueue.scripts import INCLUDE, NAMES, load_script

PACKAGE = Path(__file__).resolve().parent.parent / "guestqueue"
TESTS = Path(__file__).resolve().parent
MAX_MODULE_LINES = 400
MAX_CLASS_LINES = 250
ENTRY_POINTS = {"guestqueue", "guestqueue.cli", "guestqueue.__main__"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> list[str]:
    if node.level == 0:
        base = node.module or ""
    else:
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join(package + ([node.module] if node.module else []))
    if not base.startswith("guestqueue"):
        return []
    if node.module is None:  # from . import x: x may be a module
        return [f"{base}.{alias.name}" for alias in node.names]
    return [base]


def _parse(path: Path) -> ast.Module:
    return _parse_source(path.read_text())


def _parse_source(source: str) -> ast.Module:
    try:
        return ast.parse(source)
    except SystemError:  # CPython 3.11.7's "AST constructor recursion depth mismatch" (gh-106905): once more
        return ast.parse(source)


def _imports_ours(node: ast.AST) -> bool:
    if isinstance(node, ast.ImportFrom):
        return bool(node.level) or (node.module or "").startswith("guestqueue")
    return isinstance(node, ast.Import) and any(alias.name.startswith("guestqueue") for alias in node.names)


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    nested: list[str] = []
    for name, path in modules.items():
        tree = _parse(path)
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                # Of our own modules: a third-party one loaded late (a slow import only one
                # command needs) cannot hide a circle.
                nested += [
                    f"{name}:{inner.lineno}"
                    for inner in ast.walk(node)
                    if (
                        isinstance(inner, ast.ImportFrom)
                        and (inner.level or (inner.module or "").startswith("guestqueue"))
                    )
                    or (isinstance(inner, ast.Import) and any(a.name.startswith("guestqueue") for a in inner.names))
                ]
            if isinstance(node, ast.ImportFrom):
                targets = _resolve(name, path, node)
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("guestqueue")]
            else:
                continue
            for target in targets:
                while target not in modules and "." in target:
                    target = target.rsplit(".", 1)[0]  # a name imported from a module
                if target in modules and target != name:
                    graph[name].add(target)
    return graph, nested


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            # A package's __init__ importing its own submodules is how packages work, not a circle.
            if node == nxt.rsplit(".", 1)[0] or state.get(nxt) == 2:
                continue
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if (found := visit(nxt)) is not None:
                return found
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)) is not None:
            return found
    return None


def test_no_import_circles() -> None:
    graph, _ = _graph()
    cycle = _cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_one() -> None:
    # The check above must be able to fail.
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_imports_of_our_modules_inside_functions() -> None:
    _, nested = _graph()
    assert not nested, f"imports inside functions (hiding a circle?): {nested}"


def test_only_the_entry_points_import_the_web_layer() -> None:
    graph, _ = _graph()
    offenders = sorted(
        f"{name} -> {target}"
        for name, targets in graph.items()
        for target in targets
        if _in_web(target) and not _in_web(name) and name not in ENTRY_POINTS
    )
    assert not offenders, offenders


def _in_web(module: str) -> bool:
    # Not a plain prefix test: guestqueue.webhooks is not part of guestqueue.web.
    return module == "guestqueue.web" or module.startswith("guestqueue.web.")


def test_lua_lives_in_lua_files() -> None:
    # Scripts inside Python strings were spelled in pieces glued together (issue 23); each is a
    # file in guestqueue/scripts now, its shared prelude named by `--! include`.
    offenders = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if "redis.call(" in p.read_text())
    assert not offenders, f"Lua inside Python: {offenders}"


def test_every_script_loads_with_its_includes_once() -> None:
    scripts = sorted(p.stem for p in (PACKAGE / "scripts").glob("*.lua"))
    assert len(scripts) > 20
    for name in scripts:
        text = load_script(name)  # an include naming no file raises here
        assert text.count("local t = redis.call('TIME')") <= 1, f"{name}: the time prelude twice"
        for line in text.splitlines():
            if line.startswith(INCLUDE):
                assert line.removeprefix(INCLUDE).strip() in [*scripts, NAMES], f"{name}: {line}"


def test_scripts_spell_no_key_name_of_their_own() -> None:
    # Before (issue 23): scripts built `prefix .. ':sessions'` and eleven other names keys.py did not
    # list. Now a script names a key it finds by an id through named(prefix, KEY.<name>, id), whose
    # names lines/redis/keys.py writes (SCRIPT_NAMES); the rest come as KEYS.
    spelled = re.compile(r"\.\.\s*'[:][a-z-]")
    offenders = sorted(p.name for p in (PACKAGE / "scripts").glob("*.lua") if spelled.search(p.read_text()))
    assert not offenders, f"key names spelled in Lua: {offenders}"
    used = {m for p in (PACKAGE / "scripts").glob("*.lua") for m in re.findall(r"KEY\.(\w+)", p.read_text())}
    assert used and used <= set(SCRIPT_NAMES), f"names keys.py does not declare: {sorted(used - set(SCRIPT_NAMES))}"
    for p in (PACKAGE / "scripts").glob("*.lua"):
        if "named(" in p.read_text():
            assert "local function named(" in load_script(p.stem), f"{p.name}: uses named() without including names"


def test_redis_errors_are_mapped_at_one_boundary() -> None:
    # Before (issue 23): 52 `except RedisError` clauses in 10 modules, the "unavailable" message
    # spelled in each. Now lines/redis/boundary.py alone knows what redis-py raises.
    boundary = PACKAGE / "lines" / "redis" / "boundary.py"
    offenders = sorted(
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if p != boundary and ("redis.exceptions" in p.read_text() or "RedisError" in p.read_text())
    )
    assert not offenders, f"Redis errors caught outside lines/redis/boundary.py: {offenders}"


def _sizes(path: Path, source: str) -> list[str]:
    lines = len(source.splitlines())
    found = [f"{path.relative_to(PACKAGE)}: {lines} lines"] if lines > MAX_MODULE_LINES else []
    for node in ast.walk(_parse_source(source)):
        if isinstance(node, ast.ClassDef) and (size := (node.end_lineno or 0) - node.lineno + 1) > MAX_CLASS_LINES:
            found.append(f"{path.relative_to(PACKAGE)}: class {node.name} {size} lines")
    return found


def test_no_module_or_class_is_too_big_to_read_at_once() -> None:
    # Before (issue 23): service.py 834 lines (QueueService 620), linespec.py 650, store.py 625,
    # lines/redis/line.py 584 (RedisLine 484), config.py 555 (Settings 369), 13 modules over 400.
    offenders = [found for path in sorted(PACKAGE.rglob("*.py")) for found in _sizes(path, path.read_text())]
    assert not offenders, offenders


def test_the_size_check_finds_a_big_class_and_module() -> None:
    # The check above must be able to fail: a class one line over, in a module one line over.
    source = "class Big:\n" + "    x = 1\n" * MAX_CLASS_LINES + "\n" * (MAX_MODULE_LINES - MAX_CLASS_LINES)
    path = PACKAGE / "big.py"
    found = _sizes(path, source)
    assert found == [f"big.py: {MAX_MODULE_LINES + 1} lines", f"big.py: class Big {MAX_CLASS_LINES + 1} lines"], found


def test_test_modules_import_no_other_test_module() -> None:
    # Shared helpers live in tests/support/ (issue 23: 17 test modules imported others' privates).
    offenders = sorted(
        f"{path.name} -> {node.module}"
        for path in TESTS.rglob("test_*.py")
        for node in ast.walk(_parse(path))
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[-1].startswith("test_")
    )
    assert not offenders, offenders
