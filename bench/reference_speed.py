"""Speed of the methods' AUTHORS' code, one image at a time on CPU (2 threads), random weights at real size.

    PYTHONPATH=/tmp/refenv .venv/bin/python bench/reference_speed.py --grad-eclip /tmp/grad_eclip_generate_emap.py

The yardstick for our batched re-implementations (bench/relevancy.py): LeGrad (legrad-torch on open_clip 2.23
ViT-B-16, layer_index=-2), Grad-ECLIP (the authors' clip_encode_dense + grad_eclip on the same ViT-B-16) and
pytorch-grad-cam's GradCAM on RN50 (layer4) and convnext_tiny (trunk.stages[-1]) with open_clip 3.3. Each: 1 warm-up
image, then n images timed. The reference environment /tmp/refenv and the two-process split (legrad-torch needs
open_clip <= 2.23, the project runs 3.3) are described in tests/data/make_reference_maps.py, whose Grad-ECLIP loader
is reused. Writes bench/results/reference_speed.json {method: {model, img_per_s, n}}.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def reference_module():
    spec = importlib.util.spec_from_file_location("make_reference_maps", ROOT / "tests/data/make_reference_maps.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def img_per_s(fn, images, texts) -> float:
    """fn(image, text) on one warm-up image, then on each image in turn: images per second."""
    fn(images[:1], texts[:1])
    t = time.perf_counter()
    for b in range(1, len(images)):
        fn(images[b:b + 1], texts[b:b + 1])
    return (len(images) - 1) / (time.perf_counter() - t)


def inputs(n, S, E):
    import torch
    import torch.nn.functional as F
    g = torch.Generator().manual_seed(0)
    return torch.randn(n + 1, 3, S, S, generator=g), F.normalize(torch.randn(n + 1, E, generator=g), dim=-1)


def phase_oc223(n: int, grad_eclip_path: str) -> dict:
    import open_clip
    import torch.nn.functional as F
    import legrad

    model = open_clip.create_model("ViT-B-16").eval()
    images, texts = inputs(n, 224, 512)
    le = legrad.LeWrapper(model, layer_index=-2)  # patches model.visual in place
    out = {"legrad": {"model": "ViT-B-16", "img_per_s": img_per_s(
        lambda x, t: le.compute_legrad_clip(text_embedding=t, image=x), images, texts), "n": n}}

    model = open_clip.create_model("ViT-B-16").eval()
    ns = reference_module().load_grad_eclip(grad_eclip_path, model)

    def grad_eclip(x, t):
        outputs, v_final, last_input, v, q_out, k_out, attn, att_output, map_size = ns["clip_encode_dense"](x)
        c = (F.normalize(outputs[:, 0], dim=-1) @ t.T)[0][0]
        return ns["grad_eclip"](c, q_out, k_out, v, att_output, map_size, withksim=True)

    out["grad_eclip"] = {"model": "ViT-B-16", "img_per_s": img_per_s(grad_eclip, images, texts), "n": n}
    return out


def phase_oc33(n: int) -> dict:
    import open_clip
    import torch
    import torch.nn.functional as F
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    class Cosine(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model, self.text = model, None

        def forward(self, x):
            return (F.normalize(self.model.encode_image(x), dim=-1) * self.text).sum(-1, keepdim=True)

    out = {}
    for name, layer in (("RN50", lambda v: v.layer4), ("convnext_tiny", lambda v: v.trunk.stages[-1])):
        model = open_clip.create_model(name).eval()
        wrapper = Cosine(model)
        images, texts = inputs(n, 224, open_clip.get_model_config(name)["embed_dim"])
        with GradCAM(model=wrapper, target_layers=[layer(model.visual)]) as cam:
            def fn(x, t):
                wrapper.text = t
                return cam(input_tensor=x, targets=[ClassifierOutputTarget(0)])
            out["gradcam_" + name] = {"model": name, "img_per_s": img_per_s(fn, images, texts), "n": n}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--grad-eclip", required=True, help="the authors' generate_emap.py")
    ap.add_argument("--refenv", default="/tmp/refenv")
    ap.add_argument("--n", type=int, default=8, help="images timed per method, after one warm-up")
    ap.add_argument("--phase", choices=["oc33", "oc223"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.phase:
        if a.phase == "oc33":
            sys.path.append(a.refenv)  # pytorch_grad_cam behind the venv's open_clip 3.3
        import torch
        torch.set_num_threads(2)
        res = phase_oc33(a.n) if a.phase == "oc33" else phase_oc223(a.n, a.grad_eclip)
        print(json.dumps(res))
        return
    results = {}
    for phase in ("oc223", "oc33"):
        env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))  # as mapcap sets it
        rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p) != Path(a.refenv)]
        env["PYTHONPATH"] = os.pathsep.join(([a.refenv] if phase == "oc223" else []) + rest)
        run = subprocess.run([sys.executable, __file__, "--phase", phase, *sys.argv[1:]], env=env, check=True,
                             stdout=subprocess.PIPE, text=True)
        results.update(json.loads(run.stdout.strip().splitlines()[-1]))
    sys.path.insert(0, str(ROOT / "bench"))
    from timing import print_table
    print_table(["method", "model", "img/s"], [[k, v["model"], f"{v['img_per_s']:.2f}"] for k, v in results.items()])
    path = ROOT / "bench/results/reference_speed.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
