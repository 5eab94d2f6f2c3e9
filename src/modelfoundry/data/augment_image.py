"""Image transforms on a batch of scaled images (B, C, H, W), in plain torch (no torchvision).

Each function takes the batch and per-row draws (made by the caller from its seeded generator) and returns a new
batch; rows not chosen come back unchanged. Affine changes and random resized crops are both affine maps of the
image plane, so they are composed into one matrix per row and resampled with a single `affine_grid` +
`grid_sample` call per batch.

Coordinates are torch's normalised ones: x and y in [-1, 1] from the left/top edge to the right/bottom edge.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def rows_chosen(p: float, rows: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """(rows,) bool: each row chosen with probability `p`."""
    return torch.rand(rows, generator=generator, device=device) < p


def uniform(low: float, high: float, rows: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """(rows,) float32 drawn uniformly in [low, high]."""
    return low + (high - low) * torch.rand(rows, generator=generator, device=device)


def flip(x: torch.Tensor, horizontal: torch.Tensor, vertical: torch.Tensor) -> torch.Tensor:
    """Mirror left-right the rows where `horizontal` (B,) is true and top-bottom where `vertical` is."""
    x = torch.where(horizontal[:, None, None, None], x.flip(-1), x)
    return torch.where(vertical[:, None, None, None], x.flip(-2), x)


def affine_inverse(angle_deg: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, shear_deg: torch.Tensor,
                   height: int, width: int) -> torch.Tensor:
    """(B, 3, 3): for each row, the map from output to input coordinates of rotating by `angle_deg`
    (counter-clockwise as displayed), shearing by `shear_deg` along x, zooming by `scale` and shifting by `shift`
    (B, 2) (shares of the width and height), all about the image centre.

    The rotation is done in pixel units (not in the normalised square), so a non-square image is not skewed.
    """
    a, s = torch.deg2rad(angle_deg), torch.deg2rad(shear_deg)
    cos, sin, tan = torch.cos(a), torch.sin(a), torch.tan(s)
    # forward map in pixel units centred on the image: rotate(a) @ shear(s) @ zoom(scale); y points down, so a
    # counter-clockwise turn on screen is [[cos, sin], [-sin, cos]]
    forward = torch.stack([torch.stack([cos, cos * tan + sin], -1),
                           torch.stack([-sin, -sin * tan + cos], -1)], -2) * scale[:, None, None]  # (B, 2, 2)
    half = torch.tensor([width / 2, height / 2], dtype=forward.dtype, device=forward.device)
    normalised = forward * half[None, None, :] / half[None, :, None]  # diag(half)^-1 @ forward @ diag(half)
    (a11, a12), (a21, a22) = normalised[:, 0].unbind(-1), normalised[:, 1].unbind(-1)
    det = a11 * a22 - a12 * a21  # zoom > 0 and |shear| < 90 degrees: never 0
    inverse = torch.stack([torch.stack([a22, -a12], -1), torch.stack([-a21, a11], -1)], -2) / det[:, None, None]
    offset = 2 * shift  # a shift of a share of the width is twice that in normalised units
    out = torch.zeros(len(angle_deg), 3, 3, dtype=forward.dtype, device=forward.device)
    out[:, :2, :2] = inverse
    out[:, :2, 2] = -(inverse @ offset[:, :, None]).squeeze(-1)
    out[:, 2, 2] = 1
    return out


def crop_map(area: torch.Tensor, ratio: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3): the output-to-input map of a random resized crop: a part of `area` (B,) of the image with
    aspect ratio `ratio` (width / height), placed at `centre` (B, 2) in [-1, 1] (scaled to where it fits)."""
    w = torch.sqrt(area * ratio).clamp(max=1.0)
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    out = torch.zeros(len(area), 3, 3, dtype=area.dtype, device=area.device)
    out[:, 0, 0], out[:, 1, 1], out[:, 2, 2] = w, h, 1
    out[:, 0, 2], out[:, 1, 2] = centre[:, 0] * (1 - w), centre[:, 1] * (1 - h)
    return out


def warp(x: torch.Tensor, maps: torch.Tensor, fill: float) -> torch.Tensor:
    """Resample images `x` (N, C, H, W) through output-to-input maps (N, 3, 3) (bilinear). The image covers
    [-1, 1]: a point within it takes the nearest pixels' values (its edge pixels reach to the border), a point
    outside it is `fill` (the scaled value of a black pixel)."""
    grid = F.affine_grid(maps[:, :2, :].to(x.dtype), list(x.shape), align_corners=False)  # (N, H, W, 2)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    outside = (grid.abs() > 1).any(-1)[:, None]  # (N, 1, H, W)
    return out.masked_fill(outside, fill)


def color(x: torch.Tensor, chosen: torch.Tensor, shift: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Contrast then brightness of the chosen rows: (x - mean) * factor + mean + shift * (max - min), per image."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    span = (x.amax(dim=(1, 2, 3), keepdim=True) - x.amin(dim=(1, 2, 3), keepdim=True))
    changed = (x - mean) * factor[:, None, None, None] + mean + shift[:, None, None, None] * span
    return torch.where(chosen[:, None, None, None], changed, x)


def cutout(x: torch.Tensor, chosen: torch.Tensor, top: torch.Tensor, left: torch.Tensor, side_h: int,
           side_w: int) -> torch.Tensor:
    """Erase `side_h` x `side_w` rectangles with top-left corners (top, left) (B, holes) in the chosen rows,
    setting them to each image's per-channel mean."""
    height, width = x.shape[-2:]
    ys = torch.arange(height, device=x.device)[None, None, :, None]  # (1, 1, H, 1)
    xs = torch.arange(width, device=x.device)[None, None, None, :]
    top, left = top[:, :, None, None], left[:, :, None, None]  # (B, holes, 1, 1)
    inside = (ys >= top) & (ys < top + side_h) & (xs >= left) & (xs < left + side_w)  # (B, holes, H, W)
    erase = inside.any(dim=1, keepdim=True) & chosen[:, None, None, None]  # (B, 1, H, W)
    return torch.where(erase, x.mean(dim=(2, 3), keepdim=True), x)


def cutmix_box(lam: float, height: int, width: int, centre_y: int, centre_x: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the pasted rectangle: (1 - lam) of the area about the centre, clipped."""
    cut = math.sqrt(1.0 - lam)
    half_h, half_w = round(height * cut) // 2, round(width * cut) // 2
    return (max(centre_y - half_h, 0), min(centre_y + half_h, height),
            max(centre_x - half_w, 0), min(centre_x + half_w, width))


def paste(x: torch.Tensor, perm: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
    """Each image with the rectangle `box` taken from image `perm[i]` of the batch."""
    top, bottom, left, right = box
    out = x.clone()
    out[:, :, top:bottom, left:right] = x[perm][:, :, top:bottom, left:right]
    return out
