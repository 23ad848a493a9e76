"""The pipeline as dvc.yaml declares it: the stages, what each runs, reads and writes, and the graph.

The one reader of dvc.yaml's shape. The Airflow DAG makes one task per stage and one edge per
dependency from it; `--check` compares each stage's declared code dependencies with the code it runs.

    python -m medsql.pipeline           each stage with the stages it waits for
    python -m medsql.pipeline --check   per stage, the code deps to add to or remove from dvc.yaml (exit 1 if any)

The graph is DVC's own (`dvc dag` draws the same): stage B depends on stage A when one of B's deps is
one of A's outputs (outs, metrics or plots), lies inside one of them, or holds one.

A stage's code is the import closure of the module its cmd runs (`python -m medsql.X`): the module and
every module of the package it imports (`import medsql...`, `from medsql... import`, relative imports),
at module level or inside functions, transitively, read with `ast` (nothing is imported). Imports under
`if TYPE_CHECKING:` never run and do not count. A package's `__init__.py` counts when it runs code
(anything but a docstring and constants) or when a name is imported from it. Some modules also read
versioned files at run time (`RUNTIME_READS`: the GX context that medsql.validate opens, the linker's
lexicon). Deps name files, never a package folder: a folder dep reruns the stage when any file in it changes and hides
what the stage uses.
"""

from __future__ import annotations

import argparse
import ast
import posixpath
import shlex
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

OUTPUT_KINDS = ("outs", "metrics", "plots")  # what a stage writes, as dvc.yaml lists it


def _gx_context(root: Path) -> tuple[str, ...]:
    """The versioned GX context: every entry of gx/ but GX's scratch folder uncommitted/ and dotfiles."""
    gx_dir = root / "gx"
    if not gx_dir.is_dir():
        return ()
    return tuple(sorted(f"gx/{entry.name}" for entry in gx_dir.iterdir()
                        if entry.name != "uncommitted" and not entry.name.startswith(".")))


# Files a module reads at run time besides its imports (module file -> its reads, from the project root).
# train logs medsql/serving.py as the MLflow model's code (models-from-code); the copy of the package it
# adds as code_paths is packaging for `mlflow models serve`, not something the stage's outputs depend on.
RUNTIME_READS = {
    "medsql/validate.py": _gx_context,
    "medsql/train.py": lambda _root: ("medsql/serving.py",),
    "medsql/linking.py": lambda _root: ("medsql/resources/lexicon.yaml",),  # the clinical lexicon
}


class PipelineError(ValueError):
    """dvc.yaml (or a module a stage runs) that this reader cannot use; the message names the place."""


@dataclass(frozen=True)
class Stage:
    name: str
    commands: tuple[str, ...]
    deps: tuple[str, ...]   # paths relative to the project root, normalised
    outs: tuple[str, ...]   # outs, metrics and plots, likewise

    @property
    def modules(self) -> tuple[str, ...]:
        """The modules that the stage's commands run with `python -m <module>`."""
        found = []
        for command in self.commands:
            words = shlex.split(command)
            found += [module for flag, module in zip(words, words[1:], strict=False) if flag == "-m"]
        return tuple(found)


@dataclass(frozen=True)
class Pipeline:
    root: Path                 # the folder that holds dvc.yaml
    stages: dict[str, Stage]   # in dvc.yaml's order

    def upstream(self, name: str) -> list[str]:
        """The stages whose outputs stage `name` depends on, in dvc.yaml's order."""
        deps = self.stages[name].deps
        return [other.name for other in self.stages.values() if other.name != name
                and any(_overlap(dep, out) for dep in deps for out in other.outs)]

    def edges(self) -> set[tuple[str, str]]:
        """(upstream, downstream) for every dependency between two stages."""
        return {(before, name) for name in self.stages for before in self.upstream(name)}

    def leaves(self) -> list[str]:
        """The stages no other stage depends on."""
        needed = {before for before, _ in self.edges()}
        return [name for name in self.stages if name not in needed]


def _overlap(a: str, b: str) -> bool:
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def _entries(value: Any, where: str) -> Iterator[str]:
    """The paths of a deps/outs list: plain paths or one-key mappings {path: options}."""
    for entry in value or []:
        if isinstance(entry, str):
            yield entry
        elif isinstance(entry, dict) and len(entry) == 1:
            yield next(iter(entry))
        else:
            raise PipelineError(f"{where}: not a path or {{path: options}}: {entry!r}")


def load_pipeline(dvc_yaml: str | Path) -> Pipeline:
    """Read the stages of `dvc_yaml`; paths become relative to its folder."""
    dvc_yaml = Path(dvc_yaml)
    try:
        stages = (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages") or {}
    except (OSError, yaml.YAMLError) as err:
        raise PipelineError(f"{dvc_yaml}: cannot read the pipeline: {err}") from err
    pipeline = Pipeline(root=dvc_yaml.parent.resolve(), stages={})
    for name, spec in stages.items():
        where = f"{dvc_yaml}: stage {name}"
        if not isinstance(spec, dict) or "cmd" not in spec:
            raise PipelineError(f"{where}: no cmd (foreach/matrix stages are not supported here)")
        wdir = spec.get("wdir", ".")

        def normalised(path: str, wdir: str = wdir, where: str = where) -> str:
            if "${" in path:
                raise PipelineError(f"{where}: templated path {path!r} is not supported here")
            return posixpath.normpath(posixpath.join(wdir, path))

        cmd = spec["cmd"]
        pipeline.stages[name] = Stage(
            name=name,
            commands=tuple(cmd) if isinstance(cmd, list) else (cmd,),
            deps=tuple(normalised(path) for path in _entries(spec.get("deps"), f"{where} deps")),
            outs=tuple(normalised(path) for kind in OUTPUT_KINDS
                       for path in _entries(spec.get(kind), f"{where} {kind}")),
        )
    return pipeline


# --- the code a stage runs -----------------------------------------------------------------------------

def _module_file(module: str, root: Path) -> Path | None:
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _runs_code(tree: ast.Module) -> bool:
    """Whether a module does more than hold a docstring and constants (`__version__ = "0.1"`)."""
    for index, node in enumerate(tree.body):
        if index == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # the docstring
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            continue
        if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            try:
                ast.literal_eval(node.value)
                continue
            except ValueError:
                pass
        return True
    return False


class _Imports(ast.NodeVisitor):
    """Every import a module executes: (module, names imported from it); `import a.b` has no names."""

    def __init__(self, package: str) -> None:
        self.package = package  # the package that holds the module, for relative imports
        self.found: list[tuple[str, tuple[str, ...]]] = []

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
                (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"):
            for child in node.orelse:  # the body only runs under a type checker
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.found += [(alias.name, ()) for alias in node.names]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            parts = self.package.split(".")
            base = ".".join(parts[:len(parts) - node.level + 1])
            module = f"{base}.{node.module}" if node.module else base
        else:
            module = node.module or ""
        self.found.append((module, tuple(alias.name for alias in node.names)))


def import_closure(module: str, root: Path) -> set[Path]:
    """The files of `module`'s package that running `module` executes: itself and all it imports."""
    package = module.split(".")[0]
    if _module_file(module, root) is None:
        raise PipelineError(f"{module}: no such module under {root}")
    files: set[Path] = set()
    seen: set[str] = set()
    todo: list[tuple[str, bool]] = [(module, True)]  # (module, whether a name is taken from it)
    while todo:
        name, used = todo.pop()
        if name.split(".")[0] != package:
            continue  # another distribution: not the project's code
        path = _module_file(name, root)
        if path is None:
            continue  # `from medsql.schema import TABLES` also asks for medsql.schema.TABLES
        tree = ast.parse(path.read_text(), filename=str(path))
        if used or path.name != "__init__.py" or _runs_code(tree):
            files.add(path)
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [(".".join(parts[:end]), False) for end in range(1, len(parts))]  # parent packages run first
        visitor = _Imports(name if path.name == "__init__.py" else ".".join(parts[:-1]))
        visitor.visit(tree)
        for imported, names in visitor.found:
            todo.append((imported, not names))  # `import a.b` uses a.b
            for item in names:  # a submodule (`from medsql import paths`), else a name defined in `imported`
                submodule = f"{imported}.{item}"
                is_module = item != "*" and _module_file(submodule, root) is not None
                todo.append((submodule, True) if is_module else (imported, True))
    return files


def code_dependencies(stage: Stage, root: Path) -> set[str]:
    """The project files stage `stage` runs or reads as code, relative to `root`.

    A runtime read that is a module of the package (train's medsql/serving.py) brings its imports too.
    """
    needed: set[str] = set()
    todo = [module for module in stage.modules
            if _module_file(module, root) is not None or (root / module.split(".")[0]).is_dir()]
    while todo:  # anything else (`python -m pytest`) is not the project's code
        for path in import_closure(todo.pop(), root):
            relative = path.relative_to(root).as_posix()
            reads = set(RUNTIME_READS.get(relative, lambda _root: ())(root)) - needed
            needed |= {relative} | reads
            todo += [read.removesuffix(".py").replace("/", ".") for read in reads if read.endswith(".py")]
    return needed


@dataclass(frozen=True)
class DepsCheck:
    stage: str
    add: tuple[str, ...]      # code the stage runs or reads that dvc.yaml does not list
    remove: tuple[str, ...]   # listed code deps the stage does not use, or package folders ("path (why)")

    @property
    def ok(self) -> bool:
        return not self.add and not self.remove


def _trees(pipeline: Pipeline) -> tuple[set[str], set[str]]:
    """(the packages the stages run, every top folder whose deps the check owns: those and the runtime reads)."""
    root = pipeline.root
    packages = {module.split(".")[0] for stage in pipeline.stages.values() for module in stage.modules
                if (root / module.split(".")[0]).is_dir()}
    reads = {path.split("/")[0] for reader in RUNTIME_READS.values() for path in reader(root)}
    return packages, packages | reads


def check_stage(stage: Stage, pipeline: Pipeline) -> DepsCheck:
    needed = code_dependencies(stage, pipeline.root)
    packages, owned = _trees(pipeline)
    remove = []
    for dep in stage.deps:
        top = dep.split("/")[0]
        if top not in owned or dep in needed:
            continue
        if top in packages and (pipeline.root / dep).is_dir():
            remove.append(f"{dep} (a package folder: list the files the stage imports)")
        else:
            remove.append(f"{dep} (not imported or read)")
    return DepsCheck(stage=stage.name, add=tuple(sorted(needed - set(stage.deps))), remove=tuple(remove))


def check(pipeline: Pipeline) -> list[DepsCheck]:
    """One check per stage, in dvc.yaml's order."""
    return [check_stage(stage, pipeline) for stage in pipeline.stages.values()]


def describe(checks: list[DepsCheck]) -> str:
    lines = []
    for result in checks:
        if result.ok:
            lines.append(f"{result.stage}: ok")
            continue
        lines.append(f"{result.stage}:")
        lines += [f"  add    {path}" for path in result.add]
        lines += [f"  remove {path}" for path in result.remove]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from medsql import paths

    parser = argparse.ArgumentParser(
        prog="python -m medsql.pipeline",
        description="Read dvc.yaml: print each stage with the stages it waits for, or (--check) compare each "
                    "stage's declared code deps with the import closure of the module it runs. Reads dvc.yaml "
                    "and the package's source; writes nothing.")
    parser.add_argument("--check", action="store_true",
                        help="print per stage the code deps to add or remove; exit 1 if any")
    parser.add_argument("--dvc-yaml", type=Path, default=paths.ROOT / "dvc.yaml")
    args = parser.parse_args(argv)
    try:
        pipeline = load_pipeline(args.dvc_yaml)
        if not args.check:
            for name in pipeline.stages:
                print(f"{name} <- {', '.join(pipeline.upstream(name)) or '(nothing)'}")
            return 0
        checks = check(pipeline)
    except (PipelineError, SyntaxError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(describe(checks))
    return 0 if all(result.ok for result in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
