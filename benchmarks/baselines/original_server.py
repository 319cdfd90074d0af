"""Reconstruction of the original single-file image embedding server (the project IEI replaces).

We do not have its source; this follows its description faithfully, so the serving benchmark has
a baseline: FastAPI, model and processor loaded at import, one synchronous forward per request,
no batching across requests. Its README ran it as

    uvicorn server:app --host 0.0.0.0 --port 8000 --workers 4

The benchmark runs it the same way (4 workers) with `--app-dir benchmarks/baselines`.
"""

import base64
import io
import os
from typing import List

import torch
from fastapi import FastAPI
from PIL import Image
from pydantic import BaseModel
from transformers import AutoImageProcessor, AutoModel

MODEL_NAME = os.environ.get("IMAGE_EMBEDDING_MODEL", "google/vit-base-patch16-224")

processor = AutoImageProcessor.from_pretrained(MODEL_NAME)
model = AutoModel.from_pretrained(MODEL_NAME, add_pooling_layer=False)
model.eval()

app = FastAPI()


class EmbedRequest(BaseModel):
    inputs: List[str]


def decode_image(data: str) -> Image.Image:
    if data.startswith("data:image"):
        data = data.split(",", 1)[1]
    return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")


@app.post("/embed")
def embed(request: EmbedRequest):
    images = [decode_image(item) for item in request.inputs]
    inputs = processor(images=images, return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
    embeddings = outputs.last_hidden_state.mean(dim=1)
    return embeddings.tolist()


@app.get("/health")
def health():
    return {"message": "OK"}
