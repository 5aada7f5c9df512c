"""The built-in stages, one file each (each registers on import; tasks/pipeline/base.py has the registry)."""
from mapcap.tasks.stages import (caption_quality, captions, classify, concepts, evaluate,  # noqa: F401
                                 faithfulness, regions, relevancy, report, summarize)
