"""Chat-style content parts, as vLLM's multimodal embeddings (`messages`) and Cohere's `inputs` send them:
`{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}` and `{"type": "text", "text": "..."}`.

A CLIP or SigLIP model embeds an image or a text, never both at once (vLLM refuses the mix for CLIP too), so
one input's parts must be one image, or text only (its text parts joined with a newline, as vLLM's
chat preprocessing joins them). Parsing runs on the event loop: only cheap checks here.
"""

from __future__ import annotations

from typing import NamedTuple

from iei.engine import ImagePayload
from iei.errors import ValidationFailed
from iei.server.schemas import ChatMessage, ContentPart, ImageUrl


Place = tuple[str, int]  # (field, index): how an error names a part, `f"{field}[{index}]"`


class OneInput(NamedTuple):
    """What one input embeds: `image` or `text` (exactly one is set), and where the image sits in the
    request, for the engine's error messages (`messages[0].content[1]: not a decodable image`)."""

    image: ImagePayload | None
    text: str | None
    place: Place


def parse_parts(parts: list[ContentPart], places: list[Place], where: str) -> OneInput:
    """One input from its content parts; `places[i]` names part i in errors and `where` the whole input.
    Raises ValidationFailed: an unknown part type, a part without its field, several images, an image
    beside text, no part at all."""
    images: list[tuple[str, Place]] = []
    texts: list[str] = []
    for part, place in zip(parts, places):
        name = f"{place[0]}[{place[1]}]"
        if part.type == "image_url":
            images.append((_image_url(part, name), place))
        elif part.type == "text":
            if part.text is None:
                raise ValidationFailed(f"{name}: a `text` part needs a `text` string")
            texts.append(part.text)
        else:
            raise ValidationFailed(f"{name}: unsupported content type {part.type!r}; send `image_url` or `text` parts")
    if len(images) > 1:
        raise ValidationFailed(f"{where}: {len(images)} images in one input; this model embeds one image per input")
    if images and texts:
        raise ValidationFailed(f"{where}: an image and text in one input; CLIP and SigLIP embed an image or a "
                               "text, not both: send them as separate inputs")
    if images:
        url, place = images[0]
        return OneInput(ImagePayload(url, "base64"), None, place)
    if not texts:
        raise ValidationFailed(f"{where}: no content; send one `image_url` part or `text` parts")
    return OneInput(None, "\n".join(texts), (where, 0))


def parse_messages(messages: list[ChatMessage]) -> OneInput:
    """vLLM's chat-style embedding request: all messages together make one input (one vector); roles
    are ignored. A message's `content` may be a plain string (one text part)."""
    if not messages:
        raise ValidationFailed("`messages` cannot be empty")
    parts: list[ContentPart] = []
    places: list[Place] = []
    for m, message in enumerate(messages):
        if isinstance(message.content, str):
            parts.append(ContentPart("text", text=message.content))
            places.append((f"messages[{m}].content", 0))
        else:
            parts.extend(message.content)
            places.extend((f"messages[{m}].content", p) for p in range(len(message.content)))
    return parse_parts(parts, places, "messages")


def _image_url(part: ContentPart, name: str) -> str:
    url = part.image_url.url if isinstance(part.image_url, ImageUrl) else part.image_url
    if not url:
        raise ValidationFailed(f"{name}: an `image_url` part needs `image_url.url` (a data: URI or base64)")
    return url
