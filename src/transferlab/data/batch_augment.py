"""AugmentConfig applied to a whole batch at once, on the device the batch is on: what end-to-end training sees.

The per-image version (`augment.augment_image`: PIL in, PIL out) costs a Python round trip per image; here one
affine grid per batch (`affine_grid` + `grid_sample`) does every image's crop, zoom, shift, rotation and shear,
flips are a sign in that grid (a mirror of the output coordinates: free, and exact with align_corners=False),
and brightness is one multiply. Every random number is drawn on the CPU from the caller's torch.Generator (so a
run repeats exactly on any device, and drawing never waits for the GPU), then sent along with the batch.

The parameters keep the Keras meaning of `augment.sample_transform` (same ranges, same draws per image):
the transform is relative to the `output` x `output` centre crop of the stored `size` x `size` image, so zoom
and shift are the random resized crop, and pixels moved into view come from the image's own border region
before any fill mode is needed (fill modes: nearest -> border, reflect -> reflection, wrap -> coordinates
modulo the image, constant -> cval).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from transferlab.data.augment import AugmentConfig

_PADDING = {"nearest": "border", "reflect": "reflection", "wrap": "zeros", "constant": "zeros"}


def sample_batch_params(config: AugmentConfig, count: int, output: int, generator: torch.Generator) -> dict:
    """One draw per image, on the CPU: angle and shear (degrees), shift (pixels of the output), zoom, flips,
    brightness, as augment.sample_transform draws them for an image of `output` pixels."""
    span_x = config.width_shift_range * output if config.width_shift_range < 1 else config.width_shift_range
    span_y = config.height_shift_range * output if config.height_shift_range < 1 else config.height_shift_range
    low = torch.tensor([-config.rotation_range, -span_x, -span_y, -config.shear_range, config.zoom_range[0]])
    high = torch.tensor([config.rotation_range, span_x, span_y, config.shear_range, config.zoom_range[1]])
    angle, shift_x, shift_y, shear, zoom = (low + (high - low) * torch.rand((count, 5), generator=generator)).T
    flips = torch.rand((count, 2), generator=generator) < 0.5
    lower, upper = config.brightness_range or (1.0, 1.0)
    brightness = lower + (upper - lower) * torch.rand(count, generator=generator)
    return {
        "angle": angle, "shift": torch.stack([shift_x, shift_y], 1), "shear": shear, "zoom": zoom,
        "horizontal_flip": flips[:, 0] & config.horizontal_flip, "vertical_flip": flips[:, 1] & config.vertical_flip,
        "brightness": brightness,
    }


def sampling_matrices(params: dict, size: int, output: int) -> torch.Tensor:
    """[n, 2, 3] maps from output coordinates to stored-image coordinates (both normalised to -1..1)."""
    angle, shear = torch.deg2rad(-params["angle"]), torch.deg2rad(params["shear"])  # angle counter-clockwise
    cos, sin, tan = torch.cos(angle), torch.sin(angle), torch.tan(shear)
    # content transform A = rotation @ x-shear / zoom, in torchvision's convention (its affine's shear sign) (a zoom factor below 1 enlarges, as Keras); sample A^-1
    forward = torch.stack([torch.stack([cos, -cos * tan - sin], 1), torch.stack([sin, cos - sin * tan], 1)], 1)
    forward = forward / params["zoom"].view(-1, 1, 1)
    inverse = torch.linalg.inv(forward)
    mirror = torch.ones(len(angle), 2)
    mirror[params["horizontal_flip"], 0] = -1.0
    mirror[params["vertical_flip"], 1] = -1.0
    linear = inverse * mirror.view(-1, 1, 2) * (output / size)  # flips after the affine: mirror the output
    offset = -(inverse @ (params["shift"] * 2.0 / output).unsqueeze(2)) * (output / size)
    return torch.cat([linear, offset], 2)


def augment_batch(
    images: torch.Tensor, config: AugmentConfig, output: int, generator: torch.Generator
) -> torch.Tensor:
    """uint8 [n, 3, size, size] -> uint8 [n, 3, output, output], each image freshly augmented (on images' device)."""
    count, size = len(images), images.shape[-1]
    params = sample_batch_params(config, count, output, generator)
    if not config.changes_images():
        offset = int(round((size - output) / 2.0))
        return images[:, :, offset : offset + output, offset : offset + output]
    theta = sampling_matrices(params, size, output).to(images.device, non_blocking=True)
    grid = F.affine_grid(theta, [count, 3, output, output], align_corners=False)
    if config.fill_mode == "wrap":
        grid = torch.remainder(grid + 1.0, 2.0) - 1.0
    pixels = images.float()
    cval = config.cval if config.fill_mode == "constant" else 0.0
    out = F.grid_sample(pixels - cval, grid, mode="bilinear", padding_mode=_PADDING[config.fill_mode],
                        align_corners=False) + cval
    if config.brightness_range is not None:
        out = out * params["brightness"].to(images.device, non_blocking=True).view(-1, 1, 1, 1)
    return out.round_().clamp_(0, 255).to(torch.uint8)
