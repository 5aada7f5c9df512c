"""ClipCap (Mokady et al. 2021): a CLIP image embedding, mapped to a prefix of GPT-2 input embeddings.

The modules keep the authors' parameter names (`clip_project.*`, `gpt.*`), so their released checkpoints
(`coco_weights.pt`, `transformer_weights.pt`) load as they are. Two formats load:
- a directory written by `save_clipcap` (the toy captioner): `clipcap.json` + `clipcap.pt` + tokenizer files;
- the authors' single `.pt` state dict, whose shape is read from the tensors, with a local GPT-2 tokenizer
  directory passed separately (nothing is downloaded).
Generation is `transformers`' own `generate` on prefix embeddings: greedy or beam search, KV cache, batched.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerBase

CONFIG_FILE, WEIGHTS_FILE = "clipcap.json", "clipcap.pt"
# GPT-2 buffers that older transformers saved with every checkpoint and newer ones no longer register
DROPPED_BUFFERS = re.compile(r"^gpt\.transformer\.h\.\d+\.(attn|crossattention)\.(bias|masked_bias)$")


@dataclass(frozen=True)
class ClipCapConfig:
    prefix_length: int  # GPT-2 prefix tokens made from one CLIP embedding
    prefix_size: int  # width of the CLIP embedding the mapper reads (512 for ViT-B/32)
    mapping: str = "mlp"  # 'mlp' (an MLP, the paper's default) or 'transformer' (the transformer mapper)
    clip_length: int = 10  # transformer mapper: tokens the CLIP embedding is first spread over
    mapper_layers: int = 8  # transformer mapper: layers (8 heads each, as the authors fixed it)
    normalize_prefix: bool = False  # unit-normalise the CLIP embedding first (the authors' transformer models)
    n_embd: int = 768  # GPT-2 width (768 = GPT-2 small)
    n_layer: int = 12  # GPT-2 blocks
    n_head: int = 12  # GPT-2 heads (not recorded in a state dict: width / 64 when inferred)
    vocab_size: int = 50257  # GPT-2 vocabulary
    n_positions: int = 1024  # GPT-2 positions (prefix + caption must fit)
    eos_token_id: int = 50256  # GPT-2's <|endoftext|> (bos and eos)
    clip_model: str = ""  # open_clip model the embeddings come from ('' : the run's model)
    clip_pretrained: str = ""  # its pretrained tag or checkpoint ('toy' for the toy CLIP)

    def gpt_config(self) -> GPT2Config:
        return GPT2Config(n_embd=self.n_embd, n_layer=self.n_layer, n_head=self.n_head,
                          vocab_size=self.vocab_size, n_positions=self.n_positions,
                          bos_token_id=self.eos_token_id, eos_token_id=self.eos_token_id)


class MLP(nn.Module):
    """The authors' MLP mapper: Linear, Tanh, Linear (`clip_project.model.{0,2}`)."""

    def __init__(self, sizes: tuple[int, ...]):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(len(sizes) - 1):
            layers.append(nn.Linear(sizes[i], sizes[i + 1]))
            if i < len(sizes) - 2:
                layers.append(nn.Tanh())
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.to_queries = nn.Linear(dim, dim, bias=False)
        self.to_keys_values = nn.Linear(dim, 2 * dim, bias=False)
        self.project = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q = self.to_queries(x).reshape(b, n, self.heads, c // self.heads)  # (B, N, H, d)
        kv = self.to_keys_values(x).reshape(b, n, 2, self.heads, c // self.heads)  # (B, N, 2, H, d)
        att = (torch.einsum("bnhd,bmhd->bnmh", q, kv[:, :, 0]) * self.scale).softmax(dim=2)  # (B, N, N, H)
        return self.project(torch.einsum("bnmh,bmhd->bnhd", att, kv[:, :, 1]).reshape(b, n, c))


class _MapperMLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


class _Layer(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float = 2.0):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), _Attention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim), _MapperMLP(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _Stack(nn.Module):
    def __init__(self, dim: int, heads: int, layers: int):
        super().__init__()
        self.layers = nn.ModuleList(_Layer(dim, heads) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class TransformerMapper(nn.Module):
    """The authors' transformer mapper: CLIP → clip_length tokens, + learned prefix constants, self-attention."""

    def __init__(self, cfg: ClipCapConfig):
        super().__init__()
        self.clip_length = cfg.clip_length
        self.linear = nn.Linear(cfg.prefix_size, cfg.clip_length * cfg.n_embd)
        self.prefix_const = nn.Parameter(torch.randn(cfg.prefix_length, cfg.n_embd))
        self.transformer = _Stack(cfg.n_embd, 8, cfg.mapper_layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x).view(x.shape[0], self.clip_length, -1)  # (B, C, E)
        const = self.prefix_const.unsqueeze(0).expand(x.shape[0], -1, -1)  # (B, P, E)
        return self.transformer(torch.cat((x, const), dim=1))[:, self.clip_length:]  # (B, P, E)


class ClipCapModel(nn.Module):
    def __init__(self, cfg: ClipCapConfig):
        super().__init__()
        self.cfg = cfg
        self.gpt = GPT2LMHeadModel(cfg.gpt_config())
        e, p = cfg.n_embd, cfg.prefix_length
        self.clip_project = MLP((cfg.prefix_size, e * p // 2, e * p)) if cfg.mapping == "mlp" else TransformerMapper(cfg)

    def prefix(self, clip_embedding: torch.Tensor) -> torch.Tensor:
        """(B, D) CLIP embeddings → (B, P, E) GPT-2 input embeddings."""
        x = clip_embedding.float()
        if self.cfg.normalize_prefix:
            x = x / x.norm(dim=-1, keepdim=True)
        return self.clip_project(x).view(-1, self.cfg.prefix_length, self.cfg.n_embd)

    def forward(self, clip_embedding: torch.Tensor, tokens: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced logits at the caption positions: (B, T, V) for tokens (B, T)."""
        emb = torch.cat((self.prefix(clip_embedding), self.gpt.transformer.wte(tokens)), dim=1)  # (B, P+T, E)
        if mask is not None:
            mask = torch.cat((torch.ones_like(mask[:, :1]).expand(-1, self.cfg.prefix_length), mask), dim=1)
        logits = self.gpt(inputs_embeds=emb, attention_mask=mask).logits  # (B, P+T, V)
        return logits[:, self.cfg.prefix_length - 1:-1]

    @torch.no_grad()
    def generate(self, clip_embedding: torch.Tensor, stop_ids: list[int], pad_id: int, max_tokens: int = 20,
                 beams: int = 1, use_cache: bool = True, min_tokens: int = 0) -> torch.Tensor:
        """(B, <= max_tokens) token ids: greedy (beams=1) or beam search, batched, with a KV cache."""
        prefix = self.prefix(clip_embedding)  # (B, P, E)
        mask = torch.ones(prefix.shape[:2], dtype=torch.long, device=prefix.device)
        return self.gpt.generate(inputs_embeds=prefix, attention_mask=mask, max_new_tokens=max_tokens,
                                 min_new_tokens=min_tokens, num_beams=beams, do_sample=False,
                                 eos_token_id=stop_ids, pad_token_id=pad_id, use_cache=use_cache)


def infer_config(state: dict[str, torch.Tensor], **overrides) -> ClipCapConfig:
    """The shape of an authors' checkpoint, read from its tensors (heads: width / 64 unless overridden)."""
    try:
        wte = state["gpt.transformer.wte.weight"]
        n_embd = wte.shape[1]
        n_layer = 1 + max(int(k.split(".")[3]) for k in state if k.startswith("gpt.transformer.h."))
        gpt = dict(n_embd=n_embd, n_layer=n_layer, n_head=max(n_embd // 64, 1), vocab_size=wte.shape[0],
                   eos_token_id=wte.shape[0] - 1,
                   n_positions=state["gpt.transformer.wpe.weight"].shape[0])
        if "clip_project.prefix_const" in state:
            lin = state["clip_project.linear.weight"]  # (C*E, D)
            layers = 1 + max(int(k.split(".")[3]) for k in state if k.startswith("clip_project.transformer.layers."))
            cfg = dict(prefix_length=state["clip_project.prefix_const"].shape[0], prefix_size=lin.shape[1],
                       mapping="transformer", clip_length=lin.shape[0] // n_embd, mapper_layers=layers,
                       normalize_prefix=True)
        else:
            last = max((k for k in state if re.fullmatch(r"clip_project\.model\.\d+\.weight", k)),
                       key=lambda k: int(k.split(".")[2]))
            cfg = dict(prefix_length=state[last].shape[0] // n_embd,
                       prefix_size=state["clip_project.model.0.weight"].shape[1], mapping="mlp")
    except (KeyError, ValueError, IndexError) as e:
        raise ValueError(f"not a ClipCap checkpoint (expected keys clip_project.* and gpt.*; missing {e})") from e
    return ClipCapConfig(**{**gpt, **cfg, **overrides})


def load_weights(model: ClipCapModel, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict load, except the GPT-2 buffers newer transformers dropped and a tied lm_head left out."""
    state = {k: v for k, v in state.items() if not DROPPED_BUFFERS.match(k)}
    if "gpt.lm_head.weight" not in state:
        state["gpt.lm_head.weight"] = state["gpt.transformer.wte.weight"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{source} does not fit ClipCap {model.cfg}: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    model.gpt.tie_weights()


def load_clipcap(path: str | Path, tokenizer: str | Path | None = None,
                 **overrides) -> tuple[ClipCapModel, PreTrainedTokenizerBase]:
    """A ClipCap (eval, CPU, fp32) and its tokenizer from a `save_clipcap` directory or an authors' `.pt` file."""
    path = Path(path)
    if path.is_dir():
        if not (path / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"{path} has no {CONFIG_FILE}: not a directory written by save_clipcap")
        cfg = ClipCapConfig(**{**json.loads((path / CONFIG_FILE).read_text()), **overrides})
        state = torch.load(path / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        tokenizer = tokenizer or path
    elif path.is_file():
        state = torch.load(path, map_location="cpu", weights_only=True)
        cfg = infer_config(state, **overrides)
        if tokenizer is None:
            raise ValueError(f"{path} is an authors' ClipCap checkpoint: pass tokenizer=DIR, a local directory "
                             "with GPT-2's tokenizer files (vocab.json, merges.txt or tokenizer.json)")
    else:
        raise FileNotFoundError(f"ClipCap checkpoint {path} does not exist (a .pt file or a save_clipcap directory)")
    model = ClipCapModel(cfg)
    load_weights(model, {k: v.float() for k, v in state.items()}, str(path))
    try:
        tok = AutoTokenizer.from_pretrained(str(tokenizer), local_files_only=True)
    except (OSError, ValueError) as e:
        raise ValueError(f"no tokenizer could be loaded from {tokenizer}: {e}") from e
    if len(tok) > cfg.vocab_size:
        raise ValueError(f"tokenizer {tokenizer} has {len(tok)} tokens but the model only {cfg.vocab_size}")
    return model.eval(), tok


def save_clipcap(model: ClipCapModel, tokenizer: PreTrainedTokenizerBase, path: str | Path,
                 half: bool = True) -> Path:
    """Write config, weights (fp16 by default, tied lm_head left out) and tokenizer into one directory."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / CONFIG_FILE).write_text(json.dumps(asdict(model.cfg), indent=1))
    state = {k: (v.half() if half and v.is_floating_point() else v).clone()
             for k, v in model.state_dict().items() if k != "gpt.lm_head.weight"}
    tmp = path / (WEIGHTS_FILE + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path / WEIGHTS_FILE)
    tokenizer.save_pretrained(str(path))
    return path
