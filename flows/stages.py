"""The stages of a run, in their order (one list for the flow parameters, the reprocess form and the CLI)."""
from typing import Literal, get_args

Stage = Literal["classify", "relevancy", "regions", "concepts", "captions", "evaluate", "summarize", "report"]
ALL_STAGES: list[str] = list(get_args(Stage))

# stage -> the stage whose stored output it reads (that stage must be listed too; its finished shards are reused)
NEEDS: dict[str, str] = {"regions": "relevancy", "concepts": "regions", "captions": "regions", "summarize": "captions"}


def check_stages(stages: list[str]) -> list[str]:
    """The stages, or a ValueError naming a stage whose upstream stage is missing (it would silently not run)."""
    for stage in stages:
        need = NEEDS.get(stage)
        if need and need not in stages:
            chain = set(stages)
            while need:  # the missing stage and everything it needs in turn
                chain.add(need)
                need = NEEDS.get(need)
            raise ValueError(f"stage {stage!r} needs {NEEDS[stage]!r} in stages too (finished shards are reused, not "
                             f"redone): e.g. stages={[s for s in ALL_STAGES if s in chain]}")
    return stages
