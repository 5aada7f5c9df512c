"""The toy world: a synthetic shapes dataset with known masks and captions, and a tiny CLIP trained on it.

It is MapCap's embedded default (no model hub or dataset download exists on our machines) and the
ground truth for every semantic test (pointing game, captions naming the right shape).
"""
from pathlib import Path

TOY_DIR = Path(__file__).resolve().parent
TOY_MODEL_NAME = "MapCap-Toy-ViT"  # the open_clip config name registered from toy/model_configs
TOY_CHECKPOINT = TOY_DIR / "weights" / "toy_clip.pt"  # shipped, trained by `mapcap toy train`
TOY_CLIPCAP = TOY_DIR / "weights" / "toy_clipcap"  # shipped ClipCap directory, trained by `mapcap toy train-captioner`
