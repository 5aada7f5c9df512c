"""Reference relevancy maps computed by the methods' AUTHORS' code on the tiny towers, for offline equality tests.

    PYTHONPATH=/tmp/refenv .venv/bin/python tests/data/make_reference_maps.py \
        --grad-eclip /tmp/grad_eclip_generate_emap.py          # writes tests/data/reference_maps.pt

/tmp/refenv (not part of the project; only this script and bench/reference_speed.py use it):
    .venv/bin/pip install --target /tmp/refenv --no-deps open_clip_torch==2.23.0 legrad-torch==1.1 grad-cam==1.5.7 \
        ttach einops opencv-python-headless scikit-learn joblib threadpoolctl narwhals
(torch, timm, numpy, scipy, matplotlib come from .venv; scikit-learn & co. only because pytorch_grad_cam imports them.)
/tmp/grad_eclip_generate_emap.py: generate_emap.py of github.com/Cyang-Zhao/Grad-Eclip at GRAD_ECLIP_COMMIT.

Why two processes: legrad-torch requires open_clip <= 2.23 (its hooks assume sequence-first blocks), the project
runs 3.3, and a process imports one `open_clip`. This process imports neither and runs this file twice:
- phase oc33: .venv's open_clip 3.3 (/tmp/refenv appended behind it, for pytorch_grad_cam): builds Tiny-ViT, Tiny-RN
  and Tiny-ConvNeXt with tests/towers/tiny.py, the fixed inputs, encode_image, and pytorch-grad-cam's GradCAM maps
  (model-agnostic, so the project's open_clip is fine);
- phase oc223: /tmp/refenv first on the path: Tiny-ViT in open_clip 2.23 (same config) with the 3.3 visual state
  dict loaded strictly; checks that 2.23's encode_image, LeWrapper's and the authors' dense encoder (with the true
  head count) give 3.3's embeddings within 1e-5; then legrad-torch's LeGrad and the authors' Grad-ECLIP.

Grad-ECLIP: generate_emap.py imports packages we lack (clip, cv2, M2IB...) and loads models at import, so it is
parsed with `ast` and only `attention_layer`, `clip_encode_dense` and `grad_eclip` are executed, with torch, F and a
global `clipmodel` (the 2.23 CLIP). Two adaptations: `x = x.half()` becomes `x = x.float()` (fp32 on CPU), and
`clipmodel.visual.input_resolution` is set to the image size (open_clip calls it image_size). c is made as in the
authors' __main__: cosine of F.normalize(outputs[:, 0]) with the unit text embedding. Their last block runs ONE head
over the full width (`attention_layer(q, k, v, 1)`), so their c differs from encode_image's; kept as given.

Edge case kept as it came: gradcam_rn[1] is all zero (Grad-CAM's ReLU removes the whole map; the library's min-max
scaling then leaves zeros), so a Pearson test must take that image apart (e.g. both all zero).

Size (< 2 MB): only visual towers; weights and pixels are rounded to float16 BEFORE use and stored as float16, so
`.float()` restores exactly what produced the maps. Maps are float32 as returned.
"""
from __future__ import annotations

import argparse
import ast
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GRAD_ECLIP_COMMIT = "5c1b5cc10ce68c9caaabd9711012e892257f9d49"
MODELS = ("Tiny-ViT", "Tiny-RN", "Tiny-ConvNeXt")
N = 4


def run_phase(phase: str, refenv: str, extra: list[str]) -> None:
    """Run this file in a child whose path gives the open_clip the phase needs (see the module docstring)."""
    env = dict(os.environ)
    rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != Path(refenv).resolve()]
    env["PYTHONPATH"] = os.pathsep.join(([refenv] if phase == "oc223" else []) + rest)
    subprocess.run([sys.executable, __file__, "--phase", phase, "--refenv", refenv, *extra], env=env, check=True)


def load_grad_eclip(path: str, clipmodel):
    """The authors' three functions, exec'd from their source text with the two adaptations (module docstring)."""
    import torch
    import torch.nn.functional as F

    src = Path(path).read_text()
    nodes = [n for n in ast.parse(src).body
             if isinstance(n, ast.FunctionDef) and n.name in ("attention_layer", "clip_encode_dense", "grad_eclip")]
    code = "\n\n".join(ast.get_source_segment(src, n) for n in nodes)
    assert len(nodes) == 3 and code.count("x = x.half()") == 1
    ns = {"torch": torch, "F": F, "clipmodel": clipmodel}
    exec(compile(code.replace("x = x.half()", "x = x.float()"), path, "exec"), ns)
    clipmodel.visual.input_resolution = clipmodel.visual.image_size[0]
    return ns


def fp16_exact(t):
    return t.half().float() if t.is_floating_point() else t


def phase_oc33(work: str, refenv: str) -> None:
    sys.path.append(refenv)  # behind .venv: pytorch_grad_cam, cv2, ttach, sklearn; open_clip stays 3.3
    sys.path.insert(0, str(ROOT))
    import open_clip
    import torch
    import torch.nn.functional as F
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from importlib.metadata import version
    from tests.towers import tiny

    class Cosine(torch.nn.Module):
        """GradCAM's model: row b is cos(image b, text b), shape (B, 1)."""
        def __init__(self, model, text):
            super().__init__()
            self.model, self.text = model, text

        def forward(self, x):
            return (F.normalize(self.model.encode_image(x), dim=-1) * self.text[:len(x)]).sum(-1, keepdim=True)

    out = {"state_dicts": {}, "logit_scale": {}, "pixels": {}, "texts": {}, "embeddings": {}, "maps": {},
           "versions": {"open_clip_oc33": open_clip.__version__, "grad-cam": version("grad-cam")}}
    inputs = {}  # RN and ConvNeXt share one pixel tensor (one storage in the file)
    for name in MODELS:
        model, _, _ = tiny.build(name, seed=0)
        sd = {k: fp16_exact(v) for k, v in model.visual.state_dict().items()}
        model.visual.load_state_dict(sd)
        S = open_clip.get_model_config(name)["vision_cfg"]["image_size"]
        E = open_clip.get_model_config(name)["embed_dim"]
        if (S, E) not in inputs:
            pix = torch.randn(N, 3, S, S, generator=torch.Generator().manual_seed(0)).half().float()
            txt = F.normalize(torch.randn(N, E, generator=torch.Generator().manual_seed(1)), dim=-1)
            inputs[S, E] = pix, pix.half(), txt
        pix, stored_pix, txt = inputs[S, E]
        with torch.no_grad():
            out["embeddings"][name] = model.encode_image(pix)
        out["state_dicts"][name] = {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}
        out["logit_scale"][name] = model.logit_scale.detach().clone()
        out["pixels"][name], out["texts"][name] = stored_pix, txt
        if name != "Tiny-ViT":
            layer = model.visual.layer4 if name == "Tiny-RN" else model.visual.trunk.stages[-1]
            with GradCAM(model=Cosine(model, txt), target_layers=[layer]) as cam:
                maps = cam(input_tensor=pix, targets=[ClassifierOutputTarget(0)] * N)
            out["maps"]["gradcam_rn" if name == "Tiny-RN" else "gradcam_convnext"] = torch.from_numpy(maps)
    torch.save(out, work)


def phase_oc223(work: str, grad_eclip_path: str) -> None:
    import open_clip
    import torch
    import torch.nn.functional as F
    import legrad
    from importlib.metadata import version
    from open_clip.version import __version__ as oc_version

    assert oc_version == "2.23.0", oc_version
    sys.path.insert(0, str(ROOT))
    from tests.towers.tiny import CONFIGS  # plain dict; importing tiny.py needs open_clip >= 3 only in its functions

    prev = torch.load(work)
    name = "Tiny-ViT"
    open_clip.factory._MODEL_CONFIGS[name] = CONFIGS[name]
    sd = {k: v.float() if v.is_floating_point() else v for k, v in prev["state_dicts"][name].items()}
    pix, txt, ref = prev["pixels"][name].float(), prev["texts"][name], prev["embeddings"][name]

    def fresh():
        m = open_clip.create_model(name).eval()
        m.visual.load_state_dict(sd, strict=True)
        return m

    check = {}
    model = fresh()
    with torch.no_grad():
        check["open_clip 2.23 encode_image"] = (model.encode_image(pix) - ref).abs().max().item()
    le = legrad.LeWrapper(fresh(), layer_index=-2)
    with torch.no_grad():
        check["LeWrapper encode_image"] = (le.encode_image(pix) - ref).abs().max().item()
    legrad_maps = torch.cat([le.compute_legrad_clip(text_embedding=txt[b:b + 1], image=pix[b:b + 1]).detach()
                             for b in range(N)])[:, 0]

    ns = load_grad_eclip(grad_eclip_path, model)
    true_heads = load_grad_eclip(grad_eclip_path, model)  # check only: the dense encoder with the real head count
    one_head = true_heads["attention_layer"]
    heads = model.visual.transformer.resblocks[-1].attn.num_heads
    true_heads["attention_layer"] = lambda q, k, v, num_heads=1, attn_mask=None: one_head(q, k, v, heads, attn_mask)
    with torch.no_grad():
        check["Grad-ECLIP dense encoder, true heads"] = (
            true_heads["clip_encode_dense"](pix)[0][:, 0] - ref).abs().max().item()
        check["Grad-ECLIP dense encoder, authors' 1 head (not expected to match)"] = (
            ns["clip_encode_dense"](pix)[0][:, 0] - ref).abs().max().item()
    eclip = []
    for b in range(N):
        outputs, _, _, v, q_out, k_out, _, att_output, map_size = ns["clip_encode_dense"](pix[b:b + 1])
        c = (F.normalize(outputs[:, 0], dim=-1) @ txt[b:b + 1].T)[0][0]  # authors: cosines = (img @ target_pred)[0]
        eclip.append(ns["grad_eclip"](c, q_out, k_out, v, att_output, map_size, withksim=True).detach())
    for k, d in check.items():
        print(f"max |emb - open_clip 3.3 encode_image|  {k}: {d:.2e}")
        assert d < 1e-5 or "not expected" in k, k
    torch.save({"maps": {"legrad": legrad_maps, "grad_eclip": torch.stack(eclip)}, "checks": check,
                "versions": {"open_clip_oc223": oc_version, "legrad-torch": version("legrad-torch"),
                             "grad_eclip_commit": GRAD_ECLIP_COMMIT}}, work + ".oc223")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--grad-eclip", required=True, help="the authors' generate_emap.py")
    ap.add_argument("--refenv", default="/tmp/refenv")
    ap.add_argument("--out", default=str(Path(__file__).with_name("reference_maps.pt")))
    ap.add_argument("--phase", choices=["oc33", "oc223"], help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.phase == "oc33":
        return phase_oc33(a.work, a.refenv)
    if a.phase == "oc223":
        return phase_oc223(a.work, a.grad_eclip)
    with tempfile.TemporaryDirectory() as tmp:
        work = str(Path(tmp) / "phase.pt")
        run_phase("oc33", a.refenv, ["--work", work, "--grad-eclip", a.grad_eclip])
        run_phase("oc223", a.refenv, ["--work", work, "--grad-eclip", a.grad_eclip])
        import torch
        out, second = torch.load(work), torch.load(work + ".oc223")
    out["maps"].update(second["maps"])
    out["versions"].update(second["versions"])
    out["checks"] = second["checks"]
    out.update(out.pop("maps"))  # top-level keys legrad, grad_eclip, gradcam_rn, gradcam_convnext
    torch.save(out, a.out)
    print(f"{a.out}: {Path(a.out).stat().st_size / 1e6:.2f} MB;",
          ", ".join(f"{k} {tuple(out[k].shape)}" for k in ("legrad", "grad_eclip", "gradcam_rn", "gradcam_convnext")))


if __name__ == "__main__":
    main()
