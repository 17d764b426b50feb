"""The picture of an exported card PNG: the persona's initial on a colour drawn from its name, over
a pattern of stripes, 400 x 600 like a SillyTavern avatar. Plain, and the same for the same name."""

from __future__ import annotations

import hashlib
import io

WIDTH, HEIGHT = 400, 600


def card_picture(name: str) -> bytes:
    """PNG bytes of the persona's picture."""
    from PIL import Image, ImageDraw, ImageFont  # only an export draws

    digest = hashlib.sha256(name.encode("utf-8")).digest()
    background = (64 + digest[0] % 128, 64 + digest[1] % 128, 64 + digest[2] % 128)
    stripe = tuple(max(0, channel - 24) for channel in background)
    image = Image.new("RGB", (WIDTH, HEIGHT), background)
    draw = ImageDraw.Draw(image)
    step = 40 + digest[3] % 40
    for offset in range(-HEIGHT, WIDTH, step):  # diagonal stripes, half as wide as their step
        draw.polygon(
            [
                (offset, 0),
                (offset + step // 2, 0),
                (offset + step // 2 + HEIGHT, HEIGHT),
                (offset + HEIGHT, HEIGHT),
            ],
            fill=stripe,
        )
    initial = next((ch for ch in name if ch.isalnum()), "?").upper()
    font = ImageFont.load_default(size=260)
    draw.text((WIDTH / 2, HEIGHT / 2), initial, fill=(250, 250, 245), font=font, anchor="mm")
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()
