"""The picture examples/mgpu/mgpu.c draws, drawn again with Pillow.

The guest draws through the example mediated GPU: FILLs and COPYs into a
320x240 XRGB8888 display scattered over its RAM by its GTT, then it
rewrites five GTT entries at run time (display rows 176..191) to pages the
CPU filled with diagonal stripes, and draws through them, then PRESENTs.
This module follows the same drawing steps with Pillow's own rectangle /
crop / paste operations (nothing from paravm), so a KVM test can compare the
PNG the device model writes, pixel for pixel, with ``reference_image(args)``.
The host writes PNGs as RGB from XRGB8888 (the X byte dropped), so colours
here are RGB tuples of the guest's 0x00RRGGBB words.

Keep in step with examples/mgpu/mgpu.c: the step numbers below are its.
"""

import math

from PIL import Image, ImageDraw

W, H = 320, 240
SPRITE = 32
REMAP_ROW, REMAP_ROWS = 176, 16          # display pages 55..59
RECTS = [(16, 24, 96, 56, 0xE04040), (64, 56, 80, 64, 0x40C040),
         (180, 140, 120, 40, 0x4060E0), (8, 150, 60, 80, 0xF0D020),
         (300, 0, 20, 240, 0x202020), (0, 232, 320, 8, 0xFFFFFF)]
SPRITES = [(8, 8), (120, 100), (200, 180), (272, 120)]
CIRCLE = (232, 64, 44)                   # centre x, y, radius


def parse_args(args):
    """The guest's variant from its args (``[]`` or ``["variant", N]``)."""
    args = list(args)
    if not args:
        return 0
    if len(args) == 2 and args[0] == "variant":
        return int(args[1])
    raise ValueError(f"mgpu.c draws nothing for args {args!r}")


def palette(variant):
    """0x00RRGGBB -> the RGB tuple the guest stores for it in *variant*."""
    def pal(c):
        c &= 0xFFFFFF
        if variant == 1:
            c = ((c << 8) | (c >> 16)) & 0xFFFFFF
        return (c >> 16) & 0xFF, (c >> 8) & 0xFF, c & 0xFF
    return pal


def fill(draw, x, y, w, h, rgb):
    draw.rectangle([x, y, x + w - 1, y + h - 1], fill=rgb)


def copy(dst, x, y, w, h, src, sx, sy):
    """COPY: the whole source rect is read before anything is written."""
    dst.paste(src.crop((sx, sy, sx + w, sy + h)), (x, y))


def sprite_image(pal):
    img = Image.new("RGB", (SPRITE, SPRITE))
    for y in range(SPRITE):
        for x in range(SPRITE):
            if x in (0, SPRITE - 1) or y in (0, SPRITE - 1):
                c = 0xFFFFFF
            elif x == y or x + y == SPRITE - 1:
                c = 0xFF0000
            else:
                c = 0x8000FF if ((x >> 2) ^ (y >> 2)) & 1 else 0x00FFFF
            img.putpixel((x, y), pal(c))
    return img


def stripes_image(pal):
    """What the CPU writes into the pages the remapped GTT entries point at."""
    img = Image.new("RGB", (W, REMAP_ROWS))
    for yy in range(REMAP_ROWS):
        for x in range(W):
            img.putpixel((x, yy), pal(0x00E0E0 if ((x + 2 * yy) >> 3) & 1 else 0x303030))
    return img


def reference_image(args=()):
    """The display the guest with *args* presents, as a PIL RGB image."""
    pal = palette(parse_args(args))
    img = Image.new("RGB", (W, H))
    draw = ImageDraw.Draw(img)
    # 1. vertical gradient, a FILL per row
    for y in range(H):
        r = y * 255 // (H - 1)
        fill(draw, 0, y, W, 1, pal(r << 16 | 40 << 8 | (255 - r)))
    # 2. horizontal gradient band, a FILL per column
    for x in range(W):
        c = x * 255 // (W - 1)
        fill(draw, x, 96, 1, 32, pal((255 - c) << 16 | c << 8 | 64))
    # 3. rectangles
    for x, y, w, h, c in RECTS:
        fill(draw, x, y, w, h, pal(c))
    # 4. the circle, a FILL per row
    cx, cy, rad = CIRCLE
    for dy in range(-rad, rad + 1):
        half = math.isqrt(rad * rad - dy * dy)
        fill(draw, cx - half, cy + dy, 2 * half + 1, 1, pal(0xFF8000))
    # 5. the CPU-drawn sprite, copied by the device
    sprite = sprite_image(pal)
    for x, y in SPRITES:
        copy(img, x, y, SPRITE, SPRITE, sprite, 0, 0)
    # 6. the remapped rows show the CPU's stripes; then draw through them
    img.paste(stripes_image(pal), (0, REMAP_ROW))
    fill(draw, 96, 180, 24, 8, pal(0xFFFFFF))
    copy(img, 144, 168, SPRITE, SPRITE, sprite, 0, 0)
    copy(img, 248, 216, 64, REMAP_ROWS, img, 0, REMAP_ROW)
    return img


def xrgb_bytes(img):
    """The display as the guest's memory holds it (for its CRC-32)."""
    return bytes(b for r, g, b_ in img.getdata() for b in (b_, g, r, 0))
