"""A stage is one class in one file: its name, version, the tables it reads and writes, its frozen config and
one `compute`. Stages register by name; the registry derives the run order and the dependencies from what each
stage reads and writes, so the stage graph is declared exactly once (in the stage classes).

Adding a stage means adding one file to `tasks/stages/` with a class decorated by
`@register_stage(name, Config, reads=..., writes=...)`.
The driver (`driver.py`) does everything else: hashing, skip-if-complete, decoding, failures rows, writes,
logging, timing.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from mapcap.tasks.errors import StageUnavailable  # noqa: F401  (stages raise it; planning catches it)

if TYPE_CHECKING:
    from mapcap.tasks.pipeline.context import StageContext

Rows = list[dict[str, Any]]
NOT_STAGES = {"base", "context", "driver", "reuse", "tasks"}  # modules of this package that hold no stage


class Stage:
    """Base of every stage. `@register_stage` sets the class attributes; subclasses implement `compute`."""

    name: ClassVar[str] = ""  # registry key, the name users pick in `stages` (set by @register_stage)
    version: ClassVar[int] = 1  # bump when the output for the same inputs changes: finished work is redone
    scope: ClassVar[Literal["shard", "run"]] = "shard"  # once per shard, or once per run after every shard
    order: ClassVar[int] = 0  # tie-break between stages the dependencies leave unordered
    reads: ClassVar[tuple[str, ...]] = ()  # tables it needs (their writers must run first: its dependencies)
    writes: ClassVar[tuple[str, ...]] = ()  # tables it writes (each shard, or the run, gets one file per table)
    uses: ClassVar[tuple[str, ...]] = ()  # tables it reads when present (ordering and hashing, not required)
    Config: ClassVar[type] = object  # frozen dataclass: everything that decides its output
    summary: ClassVar[str] = ""  # one line for `--help` and the UI

    def file_name(self, cfg: Any, shard: int | None) -> str:
        """The file name (no extension) of this stage's outputs: `shard-00042`, or the run-level name."""
        from mapcap.storage.writer import shard_name

        return shard_name(shard) if shard is not None else self.name

    def files(self, cfg: Any, ctx: StageContext) -> list[str]:
        """Non-table files it writes (paths under the root), which must exist for the stage to be complete."""
        return []

    def compute(self, cfg: Any, ctx: StageContext) -> dict[str, Rows]:
        """The stage's rows per table it writes (plus optionally 'failures'), from `ctx`'s inputs."""
        raise NotImplementedError


STAGES: dict[str, type[Stage]] = {}


def register_stage(name: str, config: type, *, scope: Literal["shard", "run"] = "shard", reads: tuple[str, ...] = (),
                   writes: tuple[str, ...] = (), uses: tuple[str, ...] = (), order: int = 0, version: int = 1,
                   summary: str = ""):
    """Class decorator: register a stage under `name` with what it declares (see the Stage attributes)."""
    def deco(cls: type[Stage]) -> type[Stage]:
        if name in STAGES and STAGES[name] is not cls:
            raise ValueError(f"stage {name!r} is registered twice ({STAGES[name].__module__}, {cls.__module__})")
        cls.name, cls.Config, cls.scope, cls.reads, cls.writes = name, config, scope, tuple(reads), tuple(writes)
        cls.uses, cls.order, cls.version, cls.summary = tuple(uses), order, version, summary
        STAGES[name] = cls
        return cls
    return deco


_DISCOVERED = False


def discover() -> None:
    """Import every module of this package once (each registers its stage)."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    import mapcap.tasks.stages as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        if mod.name not in NOT_STAGES:
            importlib.import_module(f"{pkg.__name__}.{mod.name}")
    _DISCOVERED = True


def get_stage(name: str) -> Stage:
    discover()
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; the stages are {stage_order()}")
    return STAGES[name]()


def writers() -> dict[str, tuple[str, ...]]:
    """{table: the stages that write it} (each writes its own files: `evaluations` has a map and a caption part)."""
    discover()
    out: dict[str, tuple[str, ...]] = {}
    for name, cls in STAGES.items():
        for t in cls.writes:
            out[t] = out.get(t, ()) + (name,)
    return out


def dependencies(name: str) -> tuple[str, ...]:
    """The stages whose tables `name` reads, directly."""
    w = writers()
    cls = get_stage(name)
    missing = [t for t in cls.reads if t not in w]
    if missing:
        raise ValueError(f"stage {name!r} reads {missing}, which no registered stage writes")
    return tuple(dict.fromkeys(s for t in cls.reads for s in w[t] if s != name))


def upstream(name: str) -> tuple[str, ...]:
    """Every stage `name` depends on, directly or not, in run order."""
    seen: set[str] = set()
    todo = list(dependencies(name))
    while todo:
        d = todo.pop()
        if d not in seen:
            seen.add(d)
            todo += dependencies(d)
    return tuple(s for s in stage_order() if s in seen)


def stage_order() -> list[str]:
    """Every registered stage, dependencies first (per-shard stages before per-run ones), ties by `order`."""
    discover()
    done: list[str] = []
    pending = sorted(STAGES, key=lambda n: (STAGES[n].scope == "run", STAGES[n].order, n))
    while pending:
        ready = [n for n in pending if set(dependencies(n)) <= set(done)]
        if not ready:
            raise ValueError(f"the stages {pending} depend on each other in a cycle")
        done.append(ready[0])
        pending.remove(ready[0])
    return done


def check_stage_list(stages: list[str]) -> list[str]:
    """The stages in run order, or a ValueError naming a stage whose upstream stage is missing."""
    order = stage_order()
    unknown = [s for s in stages if s not in order]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; the stages are {order}")
    for s in stages:
        missing = [d for d in upstream(s) if d not in stages]
        if missing:
            full = [x for x in order if x in set(stages) | set(missing)]
            raise ValueError(f"stage {s!r} needs {missing} in stages too (finished shards are reused, not redone): "
                             f"e.g. stages={full}")
    return [s for s in order if s in stages]
