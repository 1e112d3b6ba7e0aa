"""Print the import graph of keras_vitmsn and fail on a cycle.

    python tools/import_graph.py            # cycles; exit 1 if there is one
    python tools/import_graph.py --edges    # also every edge, "importer -> imported"

Every ``import`` counts, including those inside functions (a lazy import still makes
one module depend on the other). Importing ``a.b.c`` also runs the ``__init__`` of
``a.b``: that edge counts too, except from a module inside ``a.b`` itself (Python has
already started that package) and for the top package, which imports everything.
"""

import argparse
import ast
import os
import sys

PACKAGE = "keras_vitmsn"


def modules(root):
    out = {}
    for folder, _, files in os.walk(os.path.join(root, PACKAGE)):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                parts = os.path.relpath(path, root)[: -len(".py")].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                out[".".join(parts)] = path
    return out


def _imported(node, module, is_package):
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = module.split(".")
            base = base[: len(base) - node.level + (1 if is_package else 0)]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        # "from P import a" binds a submodule P.a, or a name defined in P itself.
        return [(prefix, f"{prefix}.{alias.name}") for alias in node.names]
    return []


def graph(root):
    known = modules(root)
    edges = {m: set() for m in known}
    for module, path in known.items():
        is_package = path.endswith("__init__.py")
        tree = ast.parse(open(path, encoding="utf-8").read(), path)
        for node in ast.walk(tree):
            for name in _imported(node, module, is_package):
                if isinstance(name, tuple):
                    name = name[1] if name[1] in known else name[0]
                if name not in known:
                    continue
                targets = [name]
                parts = name.split(".")
                for i in range(2, len(parts)):
                    parent = ".".join(parts[:i])
                    inside = module == parent or module.startswith(parent + ".")
                    if not inside:
                        targets.append(parent)
                edges[module].update(t for t in targets if t != module)
    return known, edges


def cycles(edges):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--root", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    )
    parser.add_argument("--edges", action="store_true")
    args = parser.parse_args(argv)
    known, edges = graph(args.root)
    if args.edges:
        for module in sorted(edges):
            for target in sorted(edges[module]):
                if target != PACKAGE:
                    print(f"{module} -> {target}")
    found = cycles({m: {t for t in e if t != PACKAGE} for m, e in edges.items()})
    for component in found:
        print("cycle: " + " <-> ".join(component))
    print(f"{len(known)} modules, {sum(len(e) for e in edges.values())} edges, {len(found)} cycles")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
