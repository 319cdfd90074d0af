"""The servers the serving benchmark compares, and how each is started and asked for one embedding:
IEI (`iei serve`), the original single-file server (FastAPI, 4 workers, its own README command) and
infinity (the closest peer; it embeds images with CLIP-style models, so it serves a random CLIP whose
vision tower has the scenario's ViT shape).

A sibling module of the scripts (not a package): they put `benchmarks/` on sys.path and import it.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

from common import BENCH, CACHE, Server, free_port, vit_model

BASELINE_VENV = BENCH / ".venv-baselines"
INFINITY_VENV = BENCH / ".venv-infinity"
SERVERS = ("iei", "original", "infinity")


def _clip_tokenizer(folder: Path):
    """A working CLIPTokenizer built offline: byte-level vocabulary, no merges."""
    from transformers import CLIPTokenizer
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    tok_dir = folder / "_tok"
    tok_dir.mkdir(parents=True, exist_ok=True)
    (tok_dir / "vocab.json").write_text(json.dumps(vocab))
    (tok_dir / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt")), len(vocab)


def clip_model(kind: str) -> Path:
    """Random-weight CLIP for infinity (which embeds images with CLIP-style models); the vision tower
    matches the ViT of the same scenario (tiny: hidden 32, 2 layers, patch 32; base: ViT-B/16 at 224)."""
    folder = CACHE / "models" / f"clip-{kind}"
    if (folder / "config.json").exists() and (folder / "preprocessor_config.json").exists():
        return folder
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tokenizer, vocab_size = _clip_tokenizer(folder)
    if kind == "tiny":
        vision = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                      image_size=224, patch_size=32)
        text = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
        proj = 32
    else:
        vision = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                      image_size=224, patch_size=16)
        text = dict(hidden_size=512, num_hidden_layers=2, num_attention_heads=8, intermediate_size=2048)
        proj = 512
    text.update(vocab_size=vocab_size, max_position_embeddings=77, bos_token_id=vocab_size - 2,
                eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=proj)).eval().save_pretrained(folder)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    shutil.rmtree(folder / "_tok")
    return folder


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def make_server(name: str, kind: str, image: Path, iei_args: list[str], iei_venv: Path) -> Server:
    """The server `name` on a free port, serving the `kind` model ("tiny" or "base"), with the request body
    that posts `image` in its own API. `iei_args`: extra `iei serve` flags."""
    port = free_port()
    if name == "iei":
        model = vit_model(kind)
        cmd = [iei_venv / "bin" / "iei", "serve", "--model", model, "--host", "127.0.0.1", "--port", str(port),
               "--log-level", "warning", *iei_args]
        body = json.dumps({"inputs": [b64(image)]}).encode()
        return Server(name, cmd, {}, port, "/embed", body, lambda r: r[0])
    if name == "original":
        model = vit_model(kind)
        cmd = [BASELINE_VENV / "bin" / "uvicorn", "original_server:app", "--app-dir", BENCH / "baselines",
               "--host", "127.0.0.1", "--port", str(port), "--workers", "4", "--log-level", "warning"]
        body = json.dumps({"inputs": [b64(image)]}).encode()
        return Server(name, cmd, {"IMAGE_EMBEDDING_MODEL": str(model)}, port, "/embed", body, lambda r: r[0])
    if name == "infinity":
        model = clip_model(kind)
        cmd = [INFINITY_VENV / "bin" / "infinity_emb", "v2", "--model-id", model, "--served-model-name", "clip",
               "--engine", "torch", "--device", "cpu", "--dtype", "float32",
               "--no-bettertransformer", "--host", "127.0.0.1", "--port", str(port)]
        uri = "data:image/jpeg;base64," + b64(image)
        body = json.dumps({"input": [uri], "model": "clip", "modality": "image"}).encode()
        return Server(name, cmd, {"INFINITY_ANONYMOUS_USAGE_STATS": "0"}, port, "/embeddings", body,
                      lambda r: r["data"][0]["embedding"])
    raise ValueError(name)


def server_available(name: str, iei_venv: Path) -> str | None:
    """None if the server can run here, else why not."""
    if name == "iei":
        iei = iei_venv / "bin" / "iei"
        return None if iei.exists() else f"{iei} missing"
    if name == "original":
        ok = (BASELINE_VENV / "bin" / "uvicorn").exists()
        return None if ok else "benchmarks/.venv-baselines missing: run bash benchmarks/baselines/install.sh"
    if name == "infinity":
        ok = (INFINITY_VENV / "bin" / "infinity_emb").exists()
        return None if ok else "benchmarks/.venv-infinity missing: run bash benchmarks/baselines/install.sh --infinity"
    return f"unknown server {name!r}"
