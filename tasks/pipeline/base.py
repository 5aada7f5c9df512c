"""A stage is one class in one file: its name, version, the tables it reads and writes, its settings (a section
of the run's parameters, with the old flat names it replaced), its frozen config, how planning builds that config
(`plan`) and one `compute`. Stages register by name; the registry derives the run order and the dependencies from
what each stage reads and writes, so the stage graph is declared exactly once (in the stage classes).

Adding a stage means adding one file (to `tasks/stages/` and its catalogue, or a plugin's module) with a class
decorated by `@register_stage(name, Config, reads=..., writes=..., settings=...)` (docs/adding-a-stage.md).
The run's parameter model gains its section (tasks/pipeline/params.py), hence the CLI flags and the Prefect form;
the driver (`driver.py`) does everything else: hashing, skip-if-complete, decoding, failures rows, writes,
logging, timing.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from mapcap.tasks.errors import StageUnavailable  # noqa: F401  (stages raise it; planning catches it)
from mapcap.tasks.registry import Registry

if TYPE_CHECKING:
    from mapcap.tasks.pipeline.context import StageContext
    from mapcap.tasks.pipeline.facts import Facts

Rows = list[dict[str, Any]]


class Section(BaseModel):
    """A stage's settings: one section of the run's parameters (`--<section>.<field>` on the command line, one
    group of the Prefect form). The first line of its docstring describes the section."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class Stage:
    """Base of every stage. `@register_stage` sets the class attributes; subclasses implement `compute` and, when
    their config is not just their defaults, `plan`."""

    name: ClassVar[str] = ""  # registry key, the name users pick in `stages` (set by @register_stage)
    version: ClassVar[int] = 1  # bump when the output for the same inputs changes: finished work is redone
    scope: ClassVar[Literal["shard", "run"]] = "shard"  # once per shard, or once per run after every shard
    order: ClassVar[int] = 0  # tie-break between stages the dependencies leave unordered
    reads: ClassVar[tuple[str, ...]] = ()  # tables it needs (their writers must run first: its dependencies)
    writes: ClassVar[tuple[str, ...]] = ()  # tables it writes (each shard, or the run, gets one file per table)
    uses: ClassVar[tuple[str, ...]] = ()  # tables it reads when present (ordering and hashing, not required)
    deferred: ClassVar[bool] = False  # costly and optional: shards run it after a first report is written
    Config: ClassVar[type] = object  # frozen (pydantic) dataclass: everything that decides its output
    Settings: ClassVar[type[Section] | None] = None  # its section of the run's parameters, named like the stage
    old_names: ClassVar[dict[str, str]] = {}  # old flat parameter -> field of its section (still accepted)
    summary: ClassVar[str] = ""  # one line for `--help` and the UI

    def plan(self, params: Any, facts: Facts) -> Any:
        """This run's config, from the run's parameters (`params.<section>`) and what planning found (`facts`):
        keyword arguments only. Raise StageUnavailable when the run lacks what the stage needs."""
        return self.Config()

    def file_name(self, cfg: Any, shard: int | None) -> str:
        """The file name (no extension) of this stage's outputs: `shard-00042`, or the run-level name."""
        from mapcap.storage.writer import shard_name

        return shard_name(shard) if shard is not None else self.name

    def files(self, cfg: Any, ctx: StageContext) -> list[str]:
        """Non-table files it writes (paths under the root), which must exist for the stage to be complete."""
        return []

    def prepare(self, cfg: Any, workers: int) -> None:
        """Called when a shard starts whose chain will compute this stage: start what its `compute` needs and
        can get ready while earlier stages run (a worker pool's processes), without waiting for it."""

    def compute(self, cfg: Any, ctx: StageContext) -> dict[str, Rows]:
        """The stage's rows per table it writes (plus optionally 'failures'), from `ctx`'s inputs."""
        raise NotImplementedError


STAGES: Registry[type[Stage]] = Registry("stage", "mapcap.tasks.stages")


def register_stage(name: str, config: type, *, scope: Literal["shard", "run"] = "shard", reads: tuple[str, ...] = (),
                   writes: tuple[str, ...] = (), uses: tuple[str, ...] = (), order: int = 0, version: int = 1,
                   summary: str = "", settings: type[Section] | None = None, old_names: dict[str, str] | None = None,
                   deferred: bool = False):
    """Class decorator: register a stage under `name` with what it declares (see the Stage attributes)."""
    if settings is not None and not issubclass(settings, Section):
        raise TypeError(f"stage {name!r}: settings must be a Section (a pydantic model), not {settings!r}")
    unknown = sorted(set((old_names or {}).values()) - set(settings.model_fields if settings else ()))
    if unknown:
        raise ValueError(f"stage {name!r}: old_names point at {unknown}, which are not fields of its settings")

    def deco(cls: type[Stage]) -> type[Stage]:
        cls.name, cls.Config, cls.scope, cls.reads, cls.writes = name, config, scope, tuple(reads), tuple(writes)
        cls.uses, cls.order, cls.version, cls.summary = tuple(uses), order, version, summary
        cls.Settings, cls.old_names, cls.deferred = settings, dict(old_names or {}), deferred
        return STAGES.register(name, cls)
    return deco


def get_stage(name: str) -> Stage:
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; the stages are {stage_order()}")
    return STAGES.get(name)()


def writers() -> dict[str, tuple[str, ...]]:
    """{table: the stages that write it} (each writes its own files: `evaluations` has a map and a caption part)."""
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
