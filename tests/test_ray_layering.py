"""Ray stays out of the single-machine path: only the Ray launch modules import it, and only
inside functions (lazily), so `up` without --ray, the coordinator and the workers never load
it (and the `ray` extra stays optional)."""

from __future__ import annotations

import ast
import subprocess
import sys

from test_layers import ROOT, modules

RAY_MODULES = {"slos_serve.ray_actor", "slos_serve.ray_cluster", "slos_serve.scale"}


def test_only_the_ray_launch_modules_import_ray_and_only_lazily() -> None:
    offenders = []
    for module, path in modules().items():
        tree = ast.parse(path.read_text(), str(path))
        top = set(map(id, tree.body))
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if not any(n == "ray" or n.startswith("ray.") for n in names):
                continue
            if module not in RAY_MODULES or id(node) in top:
                offenders.append(f"{module}:{node.lineno}")
    assert not offenders, f"ray imported outside the launch modules or at top level: {offenders}"


def test_the_single_machine_path_does_not_load_ray() -> None:
    code = ("import sys, slos_serve.up, slos_serve.cli, slos_serve.scale, "
            "slos_serve.ray_cluster, slos_serve.ray_actor, coordinator.main, "
            "coordinator.server, slos_serve.worker.main; slos_serve.cli.build_parser(); "
            "assert 'ray' not in sys.modules, 'ray was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)
