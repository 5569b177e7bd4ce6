"""The import layering: no module imports one of a higher layer, and the core stays pure.

Layers, lowest first (a module may import its own layer and any lower one):

0. `slos_serve.core`: SLOs, stages, plans, performance model, planner, execution policy.
1. `slos_serve.sim` (the simulator runs the core) and the shared infrastructure: the proto
   stubs, the wire adapters, errors, tokenizer, metrics, gRPC helpers, KV hand-off metadata.
2. Engines: `slos_serve.engine`, the vLLM plugin.
3. Roles: the worker service and its prefill / decode logic, the coordinator.
4. The client SDK.
5. Entry points: command lines, the local cluster, demo, benchmarks, profiling, the model.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("coordinator", "decode_worker", "kv_transfer", "prefill_worker", "proto",
            "slos_serve")

# Longest prefix wins. Anything of ours not listed is an entry point (layer 5).
LAYERS: dict[str, int] = {
    "slos_serve.core": 0,
    "slos_serve.sim": 1,
    "proto": 1,
    "slos_serve.wire": 2,  # proto <-> core and engine types
    "slos_serve.errors": 1,
    "slos_serve.tokenizer": 1,
    "slos_serve.metrics": 1,
    "slos_serve.grpc_util": 1,
    "slos_serve.config": 1,
    "kv_transfer.metadata": 1,
    "kv_transfer.config": 1,
    "slos_serve.engine": 2,
    "kv_transfer.cpu_plugin": 2,
    "slos_serve.worker": 3,
    "prefill_worker": 3,
    "decode_worker": 3,
    "coordinator": 3,
    "slos_serve.client": 4,
}
ENTRY = 5
# Modules of a role package that are its command line (entry points).
ENTRY_MODULES = {"coordinator.main", "prefill_worker.main", "decode_worker.main",
                 "slos_serve.worker.main", "kv_transfer.bench"}
FORBIDDEN_IN_CORE = ("grpc", "vllm", "torch", "proto", "google.protobuf")


def layer(module: str) -> int:
    if module in ENTRY_MODULES:
        return ENTRY
    best, depth = ENTRY, -1
    for prefix, n in LAYERS.items():
        if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > depth:
            best, depth = n, len(prefix)
    return best


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            if "_pb2" in path.name:
                continue
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def imports(module: str, path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in the file, function-local ones included."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            found.append((node.lineno, name))
    return found


def ours(name: str) -> bool:
    return name.split(".")[0] in PACKAGES


def test_no_module_imports_a_higher_layer() -> None:
    bad = []
    for module, path in modules().items():
        mine = layer(module)
        for line, name in imports(module, path):
            if ours(name) and layer(name) > mine:
                bad.append(f"{path.relative_to(ROOT)}:{line}: {module} (layer {mine}) "
                           f"imports {name} (layer {layer(name)})")
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_core_imports_neither_grpc_nor_vllm_nor_torch() -> None:
    bad = []
    for module, path in modules().items():
        if layer(module) != 0:
            continue
        for line, name in imports(module, path):
            if name.split(".")[0] in {f.split(".")[0] for f in FORBIDDEN_IN_CORE} or (
                ours(name) and layer(name) != 0
            ):
                bad.append(f"{path.relative_to(ROOT)}:{line}: imports {name}")
    assert not bad, "the core must stay pure:\n" + "\n".join(bad)


def test_importing_the_planner_loads_no_grpc_vllm_or_torch() -> None:
    code = (
        "import sys, slos_serve.core.planner, slos_serve.core.policy\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'grpc', 'vllm', 'torch', 'google'})\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout.strip()
    assert out == "", f"importing the planner loaded: {out}"
