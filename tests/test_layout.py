"""The package's layout: its modules import only down the layer order, with no cycle.

Every ``import`` of ``tf_dessilbi`` in every module is read from the source
(the module's AST, so imports inside functions count as much as those at the
top), and the test fails on

* an import cycle between modules;
* an upward import: a module importing one of a later layer of `LAYERS`
  (CONTRIBUTING.md, "The layer order");
* an import of the top-level package (``import tf_dessilbi``, ``from
  tf_dessilbi import <a public name>``) anywhere but ``tf_dessilbi/__init__.py``:
  the package imports its own modules by path.

A package's ``__init__`` counts as the layer of its package; importing a
submodule is an edge to that submodule (its parent ``__init__`` only
re-exports).
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = "tf_dessilbi"

# The layer order, bottom first. A module may import modules of its own
# layer or of an earlier one. Entries are module paths below `tf_dessilbi`;
# the longest entry that is a prefix of a module's path gives its layer
# ("x.*": the modules inside package x, not x itself).
LAYERS = (
    ("_cli_start", "_compat", "_validate", "models", "configs"),  # configs: the index of names
    ("registry",),
    ("walk",),
    ("masks",),
    ("dependency",),
    ("layers", "gates"),
    ("dessilbi", "sparsity"),
    ("export.strip",),
    ("sparse", "shrink"),
    ("export", "tfmot"),
    ("procedures", "bilevel", "compress"),
    ("training",),
    ("callbacks", "train", "configs.*", ""),  # configs.*: the config files; "": the top-level __init__
)


def _modules() -> dict:
    """``{dotted name: (path, is_package)}`` of every module of the package."""
    found = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        found[".".join(parts)] = (path, is_package)
    return found


MODULES = _modules()


def _imports(module: str, path: pathlib.Path, is_package: bool):
    """``(line, target module, imported name or None)`` for each import of the package."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    yield node.lineno, alias.name, None
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")[: None if is_package else -1]
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            if base.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                yield node.lineno, submodule if submodule in MODULES else base, (
                    None if submodule in MODULES else alias.name)


EDGES = {
    module: [(line, target, name) for line, target, name in _imports(module, path, is_package)]
    for module, (path, is_package) in MODULES.items()
}


def layer_of(module: str) -> int:
    relative = module[len(PACKAGE) + 1:] if module != PACKAGE else ""
    best, best_length = None, -1
    for index, entries in enumerate(LAYERS):
        for entry in entries:
            if entry.endswith(".*"):
                matches = relative.startswith(entry[:-1])
            else:
                matches = relative == entry or relative.startswith(entry + ".") or entry == ""
            if matches and len(entry) > best_length:
                best, best_length = index, len(entry)
    return best


def test_every_module_has_a_layer():
    assert [m for m in MODULES if layer_of(m) is None] == []
    unused = [e for entries in LAYERS for e in entries
              if e and not any(m == f"{PACKAGE}.{e}" or m.startswith(f"{PACKAGE}.{e.rstrip('.*')}.")
                               for m in MODULES)]
    assert unused == [], f"LAYERS names modules that do not exist: {unused}"


def test_every_import_resolves_to_a_module():
    unknown = [f"{m}:{line} imports {t}" for m, edges in EDGES.items()
               for line, t, _ in edges if t not in MODULES]
    assert unknown == []


def test_no_import_of_the_top_level_package():
    found = [
        f"{MODULES[m][0].relative_to(ROOT)}:{line}: "
        + (f"from {PACKAGE} import {name}" if name else f"import {PACKAGE}")
        for m, edges in EDGES.items() if m != PACKAGE
        for line, target, name in edges if target == PACKAGE
    ]
    assert found == [], (
        "Modules of the package import the top-level package; import the module "
        "that defines the name instead:\n  " + "\n  ".join(found))


def test_no_upward_import():
    found = []
    for module, edges in EDGES.items():
        for line, target, _ in edges:
            if target in MODULES and target != PACKAGE and layer_of(target) > layer_of(module):
                found.append(f"{MODULES[module][0].relative_to(ROOT)}:{line}: {module} (layer "
                             f"{layer_of(module)}) imports {target} (layer {layer_of(target)})")
    assert found == [], "Upward imports (see LAYERS and CONTRIBUTING.md):\n  " + "\n  ".join(found)


def _cycles(graph: dict) -> list:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def test_no_import_cycle():
    graph = {m: sorted({t for _, t, _ in edges if t in MODULES and t != m}) for m, edges in EDGES.items()}
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c"]]


@pytest.mark.parametrize("root", ["bench"])
def test_no_import_cycle_in(root):
    """bench/ too (its subpackages included): its modules import each other by ``bench.<name>``."""
    modules = {}
    for path in sorted((ROOT / root).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                for alias in node.names:  # a submodule, else the module the name is from
                    submodule = f"{node.module}.{alias.name}"
                    targets.add(submodule if submodule in modules else node.module)
        graph[name] = sorted(t for t in targets if t in modules and t != name)
    assert _cycles(graph) == []


# Private Keras / tf_keras / TF-MOT attributes the package reaches; only
# `_compat.py` may name them (each pinned by tests/test_compat.py). The
# optimizer-subclass hooks Keras documents for subclasses (`_get_variable_index`,
# `_trainable_variables`, `_track_variable`, `_backend_update_step`, ...) are not here.
PRIVATE_KERAS = {
    "_flatten_layers", "_inputs_struct", "_outputs_struct", "_initial_epoch", "_var_key",
    "_trainable_variables_indices", "_index_dict", "_keras_history", "_run_through_graph",
    "_nodes_by_depth", "_functional", "_call_has_training_arg", "_weight_names", "_save_model",
    "__internal__",
}


def test_private_keras_apis_only_in_compat():
    found = []
    for module, (path, _) in MODULES.items():
        if module == f"{PACKAGE}._compat":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            name = None
            if isinstance(node, ast.Attribute) and node.attr in PRIVATE_KERAS:
                name = node.attr
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                  and node.func.id in ("getattr", "hasattr") and len(node.args) > 1
                  and isinstance(node.args[1], ast.Constant) and node.args[1].value in PRIVATE_KERAS):
                name = node.args[1].value
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if any(n.startswith("keras.src") for n in names):
                    name = "keras.src"
            if name:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name}")
    assert found == [], "Private Keras APIs outside _compat.py:\n  " + "\n  ".join(found)


def _contributing():
    with open(ROOT / "CONTRIBUTING.md") as f:
        return f.read()


def test_contributing_tree_names_every_module():
    text = _contributing()
    start = text.index("```\ntf_dessilbi/")
    tree = text[start:text.index("```", start + 3)]
    missing = []
    for module, (path, is_package) in MODULES.items():
        relative = path.relative_to(ROOT / PACKAGE)
        if relative.parts[0] == "configs" and relative.name != "__init__.py":
            continue  # the config files: one line for the folder
        if is_package:
            if module != PACKAGE and f"{relative.parts[-2]}/" not in tree:
                missing.append(f"{relative.parent}/")
        elif relative.name not in tree:
            missing.append(str(relative))
    assert missing == [], f"CONTRIBUTING.md's tree misses {missing}"


def test_contributing_states_the_layer_order():
    text = _contributing()
    start = text.index("## The layer order")
    section = text[start:text.index("\n## ", start + 1)]
    lines = {int(line.split(".")[0]): line for line in section.splitlines()
             if line[:1].isdigit() and ". " in line}
    for index, entries in enumerate(LAYERS, start=1):
        for entry in entries:
            if entry and not entry.endswith(".*"):
                assert f"`{entry}`" in lines[index], f"layer {index} of CONTRIBUTING.md lacks `{entry}`"
