"""Captions per second: ClipCap decoding batched vs one crop at a time, greedy and beam search.

    python bench/captions.py [--sizes toy gpt2-small] [--batch 32 512] [--n 32] [--n-single 8] [--tokens 20] [--beams 1 3]
    python bench/captions.py --crops [--n 32] [--photo 1600 1200] [--device cpu]

`--crops` times instead cutting region crops to model pixels (S = 224, three per image, inside and reaching out),
in ms per crop: PIL (crop_region + the preprocess, the CPU path), decode.resized_crops (a matrix product per
box), roi_crops (one roi_align per frame size) from the full images and from 448 px frames.

`gpt2-small` is a GPT-2-small-sized decoder (12 × 768, 50257 tokens) behind the authors' MLP mapper
(prefix 10, 512-d CLIP), with random weights: they cost what trained ones cost. Every caption is forced to
`--tokens` tokens so that early stops do not flatter a setting. `toy` is the shipped toy ClipCap, end to end
from crops (its CLIP included). On a GPU the decoder runs under bf16 autocast.
"""
from __future__ import annotations

import argparse

import mapcap  # noqa: F401  (before torch: it sets the OpenMP wait policy)

import torch

from timing import print_table, rate  # bench/timing.py (scripts run from bench/ on sys.path)
from mapcap.tasks.captioners.clipcap_model import ClipCapConfig, ClipCapModel, load_clipcap
from mapcap.tasks.models import encode_images, load_model, resolve_device, resolve_spec
from mapcap.toy import TOY_CLIPCAP


def decoder(size: str, dev: str) -> ClipCapModel:
    if size == "toy":
        return load_clipcap(TOY_CLIPCAP)[0].to(dev)
    cfg = ClipCapConfig(prefix_length=10, prefix_size=512)  # GPT-2 small behind the authors' MLP mapper
    return ClipCapModel(cfg).to(dev).eval()


def crop_times(n: int, size: tuple[int, int], dev: str) -> None:
    """ms per crop of each way to cut region crops (see the module's docstring)."""
    import numpy as np
    from PIL import Image
    from torchvision import transforms as T

    from mapcap.tasks.captioners.base import crop_region, square_box
    from mapcap.tasks.decode import geometry, normalise, resized_crops
    from mapcap.tasks.roi_crops import reduce_frames, roi_crops
    pre = T.Compose([T.Resize(224, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224), T.ToTensor(),
                     T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
    geo, (W, H) = geometry(pre), size
    rng = np.random.default_rng(0)
    pics = [Image.fromarray((rng.random((H // 20, W // 20, 3)) * 255).astype(np.uint8)).resize(size)
            for _ in range(n)]
    rgbs = [torch.from_numpy(np.array(p)).permute(2, 0, 1).contiguous().to(dev) for p in pics]  # (3, H, W) uint8
    bboxes = [(W // 5, H // 5, W // 2, H // 2), (W // 2, H // 3, W - W // 8, H - H // 8), (-W // 10, H // 2, W // 4, H)]
    boxes = [square_box(b, 1.0) for b in bboxes]
    frames = reduce_frames(rgbs, 448)
    ways = {"PIL crop_region + preprocess": lambda: [pre(crop_region(p, b, 1.0)) for p in pics for b in bboxes],
            "resized_crops (full image)": lambda: normalise(torch.stack(
                [c for rgb in rgbs for c in resized_crops(rgb, boxes, geo)]), geo),
            "roi_crops (full image)": lambda: normalise(roi_crops(rgbs, [size] * n, [boxes] * n, 224), geo),
            "roi_crops (448 px frame)": lambda: normalise(roi_crops(frames, [size] * n, [boxes] * n, 224), geo)}
    k = n * len(boxes)
    print(f"device {dev}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads; {n} images of {W}×{H}, "
          f"{k} crops to 224 px")
    print_table(["way", "ms per crop"], [[name, f"{1000 / rate(fn, k, dev):.2f}"] for name, fn in ways.items()])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--crops", action="store_true", help="time cutting region crops instead (ms per crop)")
    ap.add_argument("--photo", nargs=2, type=int, default=[1600, 1200], help="--crops: the images' W H")
    ap.add_argument("--sizes", nargs="+", default=["toy", "gpt2-small"])
    ap.add_argument("--batch", nargs="+", type=int, default=[32], help="batch sizes of the batched path")
    ap.add_argument("--n", type=int, default=32, help="captions per batched measurement")
    ap.add_argument("--n-single", type=int, default=8, help="captions for the one-at-a-time loop")
    ap.add_argument("--tokens", type=int, default=20, help="tokens per caption (forced)")
    ap.add_argument("--beams", nargs="+", type=int, default=[1, 3])
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    dev = resolve_device(args.device)
    if args.crops:
        return crop_times(args.n, tuple(args.photo), dev)
    amp = dev.startswith("cuda")
    print(f"device {dev}{' (' + torch.cuda.get_device_name() + ')' if amp else ''}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads; {args.tokens} tokens per caption")
    print("| decoder | beams | one at a time (capt/s) | batch | batched (capt/s) | speed-up |")
    print("|---|---|---|---|---|---|")
    for size in args.sizes:
        model = decoder(size, dev)
        if size == "toy":
            from PIL import Image
            lm = load_model(resolve_spec("toy", "toy", dev, "fp32"))
            crops = [Image.new("RGB", (48, 48), (40 * (i % 6), 90, 200)) for i in range(args.n)]

            def embed(lo: int, hi: int) -> torch.Tensor:
                return encode_images(lm, crops[lo:hi], normalize=False)
        else:
            emb = torch.randn(args.n, model.cfg.prefix_size, device=dev)

            def embed(lo: int, hi: int) -> torch.Tensor:
                return emb[lo:hi]
        for beams in args.beams:
            def run(step: int, n: int) -> None:
                with torch.autocast(dev.split(":")[0], torch.bfloat16, enabled=amp):
                    for lo in range(0, n, step):
                        model.generate(embed(lo, lo + step), [model.cfg.eos_token_id], model.cfg.eos_token_id,
                                       max_tokens=args.tokens, beams=beams, min_tokens=args.tokens)
            k = min(args.n_single, args.n)
            one = rate(lambda: run(1, k), k, dev)
            for batch in args.batch:
                many = rate(lambda: run(batch, args.n), args.n, dev)
                print(f"| {size} | {beams} | {one:.1f} | {batch} | {many:.1f} | {many / one:.1f}× |")


if __name__ == "__main__":
    main()
