"""The stages of a run, in their order (one list for the flow parameters, the reprocess form and the CLI)."""
from typing import Literal, get_args

Stage = Literal["classify", "relevancy", "regions", "concepts", "captions", "evaluate", "summarize", "report"]
ALL_STAGES: list[str] = list(get_args(Stage))
