"""The house of docs/architecture.md, checked from the code: every module of teamsbc has a floor,
imports only from its own floor or below, the import graph has no circle, config reads only
settings modules, and no module is much over 600 lines. A new module must be given a floor
here (and in the table of docs/architecture.md)."""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "teamsbc"

# floor -> module names (dotted, relative to teamsbc); a package name covers its modules
FLOORS: dict[int, set[str]] = {
    0: {"__init__", "addresses", "timefmt", "certnames", "tls", "labpki", "sip", "sealing", "entropy"},
    1: {"settings", "trunk_settings", "security_settings", "media.settings", "certs.settings",
        "admin_settings", "cdr.settings", "capture.settings", "config",
        "media.__init__", "certs.__init__", "cdr.__init__", "capture.__init__"},
    2: {"events", "decisions"},
    3: {"routing", "teams", "guard", "health", "digest", "media.anchor", "media.sdp_policy",
        "media.stats", "media.bencode", "transfer", "pbx_requests", "early_media"},
    4: {"relay", "tables", "hops", "proxy", "reliable", "late_offer", "pbx_leg", "dialog_end"},
    5: {"transport", "connections", "certwatch", "collector", "media.ng", "media.pool", "cdr.store", "cdr.pg", "cdr.writer", "cdr.export",
        "capture.hep", "capture.traces", "capture.mask", "metrics", "admin", "lab", "certs.acme_client",
        "certs.challenges", "certs.gate", "certs.store", "certs.policy", "certs.manager", "keyfile", "cdr.search",
        "console", "workers"},
    6: {"app", "cli", "__main__", "demo", "doctor", "teams_setup", "certs.cli", "certs.__main__",
        "cdr.cli", "cdr.__main__", "preflight", "labdefault", "console.term"},
}
MAX_LINES = 660


def modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        rel = p.relative_to(PKG).with_suffix("")
        out[".".join(rel.parts)] = p
    return out


def floor_of(name: str) -> int | None:
    best: tuple[int, int] | None = None   # (length of the matching entry, floor)
    for floor, names in FLOORS.items():
        for entry in names:
            if name == entry or name.startswith(entry + "."):
                if best is None or len(entry) > best[0]:
                    best = (len(entry), floor)
    return best[1] if best else None


def imports(name: str, path: Path) -> set[str]:
    """The teamsbc modules `name` imports (relative or absolute, at any depth of the file)."""
    tree = ast.parse(path.read_text())
    package = name.split(".")[:-1] if not path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    known = modules()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                mod = ".".join([*base, node.module] if node.module else base)
            elif node.module and node.module.startswith("teamsbc"):
                mod = node.module.removeprefix("teamsbc").lstrip(".")
            else:
                continue
            for alias in node.names:
                sub = f"{mod}.{alias.name}" if mod else alias.name
                found.add(sub if sub in known else (mod or "__init__"))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("teamsbc."):
                    found.add(alias.name.removeprefix("teamsbc."))
    return {m for m in found if m in known or m == "__init__"} - {name}


def test_every_module_has_a_floor():
    missing = sorted(n for n in modules() if floor_of(n) is None)
    assert not missing, f"give these a floor in tests/test_layers.py and docs/architecture.md: {missing}"


def test_no_import_runs_up_the_house():
    wrong = []
    for name, path in modules().items():
        mine = floor_of(name)
        for dep in imports(name, path):
            theirs = floor_of(dep)
            if mine is not None and theirs is not None and theirs > mine:
                wrong.append(f"{name} (floor {mine}) imports {dep} (floor {theirs})")
    assert not wrong, "\n".join(wrong)


def test_config_reads_only_settings():
    deps = imports("config", PKG / "config.py")
    assert deps and all(d.endswith("settings") for d in deps), deps


def test_no_import_circle():
    graph = {name: imports(name, path) for name, path in modules().items()}
    seen: dict[str, int] = {}   # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        seen[n] = 1
        stack.append(n)
        for d in sorted(graph.get(n, ())):
            if seen.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in seen:
                cycle = visit(d)
                if cycle:
                    return cycle
        stack.pop()
        seen[n] = 2
        return None

    for n in sorted(graph):
        if n not in seen:
            cycle = visit(n)
            assert cycle is None, " -> ".join(cycle)


def test_modules_stay_small():
    big = {n: len(p.read_text().splitlines()) for n, p in modules().items()}
    assert not {n: c for n, c in big.items() if c > MAX_LINES}, sorted(big.items(), key=lambda x: -x[1])[:5]
