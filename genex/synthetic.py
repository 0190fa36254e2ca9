"""Synthetic Genex-DB: forward walks through procedurally textured rooms, as equirectangular videos.

Every pixel of an equirectangular panorama is a viewing direction (longitude, latitude); we cast
that ray from the camera into a box-shaped room with pillars and colour the first surface it hits
with a periodic texture of the world coordinates. Longitude 0 (the image centre) looks along +z,
the direction the camera walks, so objects ahead grow from frame to frame and the floor texture
flows outward, as in Genex-DB. Longitude wraps, so the left and right edges meet.

The three published layouts of Genex-DB-World-Exploration are written: per scene a folder of parquet
shards whose `video` column holds mp4 bytes; per scene a folder of mp4 files; or one table for all
scenes in shards `data/train-0000k-of-0000n.parquet` with a `video` column ({bytes, path}) and a
`label` class-label column whose names (the scene types) sit in the `huggingface` schema metadata, as
HF datasets writes a Video and a ClassLabel feature. Scene folders carry the published spelling
(e.g. `Real-World`), which readers must match loosely.
"""

import argparse
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from common.cli import run_cli
from common.video import encode_video_bytes, write_mp4
from genex.prepare import SCENE_TYPES

LAYOUTS = ("parquet", "folder", "labelled")
# Folder names as published on the hub; readers match them case- and punctuation-insensitively.
PUBLISHED_SCENE_FOLDERS = {"realistic": "Realistic", "low_texture": "Low-Texture", "anime": "Anime", "real_world": "Real-World"}
CAMERA_HEIGHT = 1.6
DEFAULT_STEP = 0.12

# Surface ids of the ray caster.
FLOOR, CEILING, SIDE_WALL, END_WALL, PILLAR = range(5)


@dataclass(frozen=True)
class Room:
    """A box x in [-half_width, half_width], y in [0, height], z in [back, front], with vertical pillars."""

    half_width: float
    height: float
    back: float
    front: float
    pillars: np.ndarray  # [P, 2] pillar centres (x, z)
    pillar_radius: float
    palette: np.ndarray  # [8, 3] float colours in [0, 1]
    texture_offset: np.ndarray  # [3] (x, 0, z) shift of the textures, so no texture edge sits on the axis x = 0
    period: float  # base texture period in world units
    style: str


def make_room(seed: int, scene_type: str = "realistic", path_length: float = 8.0, texture_scale: float = 1.0) -> Room:
    """A random room long enough for a forward walk of `path_length` from z = 0; `texture_scale` multiplies its texture
    periods (coarser textures stay visible, and move coherently, in small renderings)."""
    if scene_type not in SCENE_TYPES:
        raise ValueError(f"unknown scene type {scene_type!r}; expected one of {SCENE_TYPES}")
    if not texture_scale > 0:
        raise ValueError(f"texture_scale must be positive, got {texture_scale}")
    rng = np.random.default_rng([seed, SCENE_TYPES.index(scene_type)])
    half_width = rng.uniform(2.0, 3.0)
    front = path_length + rng.uniform(2.5, 4.0)
    back = -rng.uniform(3.0, 5.0)
    # Two rows of pillars along the walls give parallax: they slide outward as the camera passes.
    pillar_z = np.arange(back + 1.5, front - 0.5, rng.uniform(1.8, 2.6))
    pillar_x = half_width - 0.6
    pillars = np.concatenate([np.stack([np.full_like(pillar_z, side * pillar_x), pillar_z], 1) for side in (-1, 1)])
    return Room(
        half_width=half_width,
        height=rng.uniform(2.8, 3.6),
        back=back,
        front=front,
        pillars=pillars,
        pillar_radius=0.22,
        palette=_palette(rng, scene_type),
        texture_offset=np.array([rng.uniform(0, 10), 0.0, rng.uniform(0, 10)], np.float32),
        period={"low_texture": 2.0, "anime": 0.8}.get(scene_type, 0.5) * rng.uniform(0.8, 1.25) * texture_scale,
        style=scene_type,
    )


def _palette(rng: np.random.Generator, scene_type: str) -> np.ndarray:
    """Eight colours whose spread sets how much texture a style shows."""
    if scene_type == "low_texture":
        # Nearly uniform surfaces: every colour close to one base tone.
        base = rng.uniform(0.35, 0.75, 3)
        return np.clip(base + rng.uniform(-0.06, 0.06, (8, 3)), 0, 1)
    if scene_type == "anime":
        # Flat saturated colours: random hues at full saturation.
        hues = rng.uniform(0, 1, 8)
        channels = np.stack([np.abs((hues * 6 + shift) % 6 - 3) - 1 for shift in (0, 4, 2)], 1)
        return np.clip(channels, 0.1, 1.0)
    return rng.uniform(0.15, 0.9, (8, 3))


@functools.lru_cache(maxsize=4)
def equirectangular_directions(width: int, height: int) -> np.ndarray:
    """Unit viewing directions [H*W, 3] (x right, y up, z forward) at the pixel centres, row-major.

    Column u looks at longitude (u + 0.5) / W * 2pi - pi, so the centre column looks forward (+z)
    and the first and last columns look backward from either side. Cached and read-only.
    """
    longitude = (np.arange(width) + 0.5) / width * 2 * np.pi - np.pi
    latitude = np.pi / 2 - (np.arange(height) + 0.5) / height * np.pi
    lon, lat = np.meshgrid(longitude, latitude)
    directions = np.stack([np.cos(lat) * np.sin(lon), np.sin(lat), np.cos(lat) * np.cos(lon)], -1).reshape(-1, 3)
    directions = directions.astype(np.float32)
    directions.flags.writeable = False
    return directions


def cast_rays(room: Room, origin: np.ndarray, directions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distance, surface id and pillar index (-1 if none) of the first hit of each ray [N, 3] from `origin`."""
    dx, dy, dz = directions.T
    with np.errstate(divide="ignore", invalid="ignore"):
        # The camera is inside the box, so each ray leaves it through the nearest of its exit planes.
        exits = []
        for d, o, low, high in ((dx, origin[0], -room.half_width, room.half_width), (dy, origin[1], 0.0, room.height), (dz, origin[2], room.back, room.front)):
            t = np.where(d > 0, high - o, low - o) / d
            exits.append(np.where(d != 0, t, np.inf))
        axis = np.argmin(exits, 0)
        distance = np.choose(axis, exits)
        surface = np.where(axis == 0, SIDE_WALL, np.where(axis == 2, END_WALL, np.where(dy < 0, FLOOR, CEILING)))
        pillar = np.full(len(directions), -1)
        # Vertical cylinders: solve |(o + t d - c)_xz|^2 = r^2 for the nearer root.
        a = dx**2 + dz**2
        for index, (cx, cz) in enumerate(room.pillars):
            ox, oz = origin[0] - cx, origin[2] - cz
            half_b = ox * dx + oz * dz
            quarter_disc = half_b**2 - a * (ox**2 + oz**2 - room.pillar_radius**2)
            t = (-half_b - np.sqrt(np.maximum(quarter_disc, 0))) / a
            hit = (quarter_disc > 0) & (t > 0) & (t < distance)
            distance = np.where(hit, t, distance)
            surface[hit] = PILLAR
            pillar[hit] = index
    return distance, surface, pillar


def _checker(u: np.ndarray, v: np.ndarray, period: float) -> np.ndarray:
    return ((np.floor(u / period) + np.floor(v / period)) % 2).astype(bool)


def _stripes(u: np.ndarray, period: float) -> np.ndarray:
    return (np.floor(u / period) % 2).astype(bool)


def _cell_noise(u: np.ndarray, v: np.ndarray, period: float) -> np.ndarray:
    """A value in [0, 1) per texture cell, fixed in the world (a hash of the cell's integer coordinates)."""
    i, j = np.floor(u / period), np.floor(v / period)
    return np.modf(np.abs(np.sin(i * 12.9898 + j * 78.233) * 43758.5453))[0]


def _line_mask(u: np.ndarray, period: float, width: float = 0.06) -> np.ndarray:
    """True near the grid lines u = k * period (the ink outlines of the anime style)."""
    phase = np.modf(np.abs(u / period))[0]
    return (phase < width) | (phase > 1 - width)


def shade(room: Room, points: np.ndarray, surface: np.ndarray, pillar: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """Colour [N, 3] in [0, 1] of the hit points: texture, face lighting and distance fog."""
    p, pal = room.period, room.palette
    colour = np.empty_like(points)
    # Texture each surface only where it was hit; (u, v) are its in-plane world coordinates.
    for kind in (FLOOR, CEILING, SIDE_WALL, END_WALL, PILLAR):
        where = np.flatnonzero(surface == kind)
        x, y, z = (points[where] + room.texture_offset).T
        if kind == FLOOR:
            u, v, texture = x, z, np.where(_checker(x, z, p)[:, None], pal[0], pal[1])
        elif kind == CEILING:
            u, v, texture = x, z, np.where(_stripes(z, 2 * p)[:, None], pal[2], 0.9)
        elif kind == SIDE_WALL:
            band = (y > 0.9) & (y < 1.3)
            u, v, texture = z, y, np.where(band[:, None], pal[5], np.where(_stripes(z, 1.5 * p)[:, None], pal[3], pal[4]))
        elif kind == END_WALL:
            u, v, texture = x, y, np.where(_checker(x, y, 1.5 * p)[:, None], pal[6], pal[0])
        else:
            centre = room.pillars[pillar[where]] + room.texture_offset[[0, 2]]
            angle = np.arctan2(x - centre[:, 0], z - centre[:, 1]) + room.texture_offset[0]
            u, v, texture = angle, y, np.where(_stripes(angle, np.pi / 4)[:, None], pal[7], pal[2] * 0.6)
        # Per-style surface character, anchored in world coordinates so it moves with the scene.
        if room.style == "real_world":
            texture = texture * (0.75 + 0.5 * _cell_noise(u, v, 0.5 * p)[:, None])
        if room.style == "anime" and kind != PILLAR:
            texture = np.where((_line_mask(u, p) | _line_mask(v, p))[:, None], 0.05, texture)
        colour[where] = texture

    # Light from above: floor brightest, walls mid, ceiling dim; fog hides far-away aliasing.
    light = np.array([1.0, 0.55, 0.8, 0.7, 0.85], dtype=points.dtype)[surface]
    fog = 1 - np.exp(-distance / {"low_texture": 6.0}.get(room.style, 9.0))
    return np.clip(colour * (light * (1 - fog))[:, None] + 0.5 * fog[:, None], 0, 1)


def render_room(room: Room, width: int, height: int, camera_position: Sequence[float], yaw: float = 0.0, supersample: int = 2) -> np.ndarray:
    """Equirectangular view uint8 [H, W, 3] of `room` from `camera_position` (x, y, z).

    `yaw` (radians) turns the camera about the vertical axis: the view shifts left by yaw / 2pi * W
    columns, circularly, which is how a panorama rotates.
    """
    origin = np.asarray(camera_position, dtype=np.float32)
    inside = [(-room.half_width, room.half_width), (0.0, room.height), (room.back, room.front)]
    if not all(low < o < high for o, (low, high) in zip(origin, inside)):
        raise ValueError(f"camera position {tuple(origin)} is outside the room {inside}")
    directions = equirectangular_directions(width * supersample, height * supersample)
    if yaw:
        # Longitude + yaw: rotate the viewing directions about the y axis.
        cos, sin = np.cos(yaw), np.sin(yaw)
        x, y, z = directions.T
        directions = np.stack([x * cos + z * sin, y, z * cos - x * sin], 1).astype(np.float32)
    distance, surface, pillar = cast_rays(room, origin, directions)
    colour = shade(room, origin + distance[:, None] * directions, surface, pillar, distance)
    # Average supersample x supersample blocks: antialiasing for the hard texture edges.
    colour = colour.reshape(height, supersample, width, supersample, 3).mean((1, 3))
    return np.round(colour * 255).astype(np.uint8)


def render_panorama(
    width: int, height: int, camera_position: Sequence[float] = (0.0, CAMERA_HEIGHT, 0.0), seed: int = 0, scene_type: str = "realistic", yaw: float = 0.0,
    texture_scale: float = 1.0,
) -> np.ndarray:
    """One equirectangular panorama uint8 [H, W, 3] of the room drawn from `seed` and `scene_type`."""
    return render_room(make_room(seed, scene_type, texture_scale=texture_scale), width, height, camera_position, yaw)


def render_forward_video(num_frames: int, width: int, height: int, seed: int = 0, step: float = DEFAULT_STEP, scene_type: str = "realistic",
                         texture_scale: float = 1.0) -> np.ndarray:
    """Frames uint8 [T, H, W, 3] of a camera walking `step` world units forward (+z) per frame."""
    if num_frames < 1 or not step > 0:
        raise ValueError(f"need num_frames >= 1 and a forward step > 0, got {num_frames} frames, step {step}")
    room = make_room(seed, scene_type, path_length=step * (num_frames - 1), texture_scale=texture_scale)
    return np.stack([render_room(room, width, height, (0.0, CAMERA_HEIGHT, step * t)) for t in range(num_frames)])


def write_genex_db(
    root,
    layout: str,
    scene_types: Sequence[str] = SCENE_TYPES,
    videos_per_scene: int = 2,
    num_frames: int = 20,
    width: int = 128,
    height: int = 64,
    seed: int = 0,
    fps: float = 12.0,
    parquet_video_type: str = "binary",
    rows_per_shard: int = 2,
    step: float = DEFAULT_STEP,
    texture_scale: float = 1.0,
) -> dict[str, list[Path]]:
    """Write a synthetic Genex-DB under `root` and return the files written per scene type.

    layout "parquet": `<Scene>/train-0000k-of-0000n.parquet`, column `video` holding mp4 bytes, either
    plain `binary` or the `struct` {"bytes", "path"} that HF datasets writes for Video features.
    layout "folder": `<Scene>/<k>.mp4`. `<Scene>` is the published folder name, e.g. `Real-World`.
    layout "labelled": `data/train-0000k-of-0000n.parquet` for all scenes, scene after scene, `rows_per_shard`
    rows a shard (so a shard may hold two scenes), columns `video` ({bytes, path}) and `label` (see LABELLED_METADATA).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if parquet_video_type not in ("binary", "struct"):
        raise ValueError(f"parquet_video_type must be 'binary' or 'struct', got {parquet_video_type!r}")

    def scene_videos(scene_number: int, scene_type: str) -> list[np.ndarray]:
        return [render_forward_video(num_frames, width, height, seed * 1000 + scene_number * 100 + k, step, scene_type, texture_scale)
                for k in range(videos_per_scene)]

    if layout == "labelled":
        rows = [(scene_type, frames) for number, scene_type in enumerate(scene_types) for frames in scene_videos(number, scene_type)]
        return write_labelled_table(Path(root) / "data", rows, list(scene_types), fps, rows_per_shard)
    written = {}
    for scene_number, scene_type in enumerate(scene_types):
        folder = Path(root) / PUBLISHED_SCENE_FOLDERS[scene_type]
        folder.mkdir(parents=True, exist_ok=True)
        videos = scene_videos(scene_number, scene_type)
        if layout == "folder":
            written[scene_type] = [write_mp4(frames, folder / f"{k:05d}.mp4", fps=fps) for k, frames in enumerate(videos)]
            continue
        shards = [videos[i : i + rows_per_shard] for i in range(0, len(videos), rows_per_shard)]
        written[scene_type] = []
        for shard_index, shard in enumerate(shards):
            data = [encode_video_bytes(frames, fps=fps) for frames in shard]
            if parquet_video_type == "struct":
                first = shard_index * rows_per_shard
                column = pa.array([{"bytes": b, "path": f"{first + k:05d}.mp4"} for k, b in enumerate(data)], pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
            else:
                column = pa.array(data, pa.binary())
            path = folder / f"train-{shard_index:05d}-of-{len(shards):05d}.parquet"
            pq.write_table(pa.table({"video": column}), path, row_group_size=1)
            written[scene_type].append(path)
    return written


def labelled_metadata(label_names: Sequence[str]) -> bytes:
    """The `huggingface` schema metadata that HF datasets writes for features {"video": Video(), "label": ClassLabel(names)}."""
    features = {"video": {"_type": "Video"}, "label": {"names": list(label_names), "_type": "ClassLabel"}}
    return json.dumps({"info": {"features": features}}).encode()


def write_labelled_table(folder: Path, rows: list[tuple[str, np.ndarray]], label_names: list[str], fps: float, rows_per_shard: int) -> dict[str, list[Path]]:
    """The one-table layout: (scene, frames) rows as `video` {bytes, path} and `label` columns in shards; the shards per scene."""
    folder.mkdir(parents=True, exist_ok=True)
    shards = [rows[i : i + rows_per_shard] for i in range(0, len(rows), rows_per_shard)]
    video_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    written: dict[str, list[Path]] = {scene: [] for scene in label_names}
    for index, shard in enumerate(shards):
        first = index * rows_per_shard
        table = pa.table({
            "video": pa.array([{"bytes": encode_video_bytes(frames, fps=fps), "path": f"{first + k:05d}.mp4"} for k, (_, frames) in enumerate(shard)], video_type),
            "label": pa.array([label_names.index(scene) for scene, _ in shard], pa.int64()),
        })
        path = folder / f"train-{index:05d}-of-{len(shards):05d}.parquet"
        pq.write_table(table.replace_schema_metadata({b"huggingface": labelled_metadata(label_names)}), path, row_group_size=1)
        for scene in dict.fromkeys(scene for scene, _ in shard):
            written[scene].append(path)
    return written


def write_validation_panoramas(folder, count: int = 2, width: int = 256, height: int = 128, seed: int = 0, texture_scale: float = 1.0) -> list[Path]:
    """Write `count` PNG panoramas (2:1, one per scene type in turn) for validation during training."""
    if width != 2 * height:
        raise ValueError(f"equirectangular panoramas are 2:1; got {width}x{height}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(count):
        scene_type = SCENE_TYPES[k % len(SCENE_TYPES)]
        path = folder / f"panorama_{k:03d}_{scene_type}.png"
        Image.fromarray(render_panorama(width, height, seed=seed + k, scene_type=scene_type, texture_scale=texture_scale)).save(path)
        paths.append(path)
    return paths


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Write a synthetic Genex-DB-World-Exploration (mp4 forward walks through textured rooms).")
    parser.add_argument("--output_dir", required=True, help="Folder to write the dataset into.")
    parser.add_argument("--layout", choices=LAYOUTS, default="folder", help=(
        "parquet: per-scene parquet shards with a `video` column of mp4 bytes; folder: per-scene folders of mp4 files; labelled: one "
        "table for all scenes in shards data/train-0000k-of-0000n.parquet with `video` ({bytes, path}) and `label` (class names = scene types) columns."))
    parser.add_argument("--scene_types", nargs="+", choices=SCENE_TYPES, default=list(SCENE_TYPES), help="Scene types to write.")
    parser.add_argument("--videos_per_scene", type=int, default=2, help="Videos per scene type.")
    parser.add_argument("--num_frames", type=int, default=20, help="Frames per video.")
    parser.add_argument("--width", type=int, default=128, help="Panorama width in pixels (2x the height for a full sphere).")
    parser.add_argument("--height", type=int, default=64, help="Panorama height in pixels.")
    parser.add_argument("--fps", type=float, default=12.0, help="Frame rate stored in the mp4 files.")
    parser.add_argument("--step", type=float, default=DEFAULT_STEP, help="World units (metres) the camera walks forward per frame.")
    parser.add_argument("--texture_scale", type=float, default=1.0,
                        help="Multiplies the rooms' texture periods: above 1 for small renderings, where fine textures alias into flicker instead of moving.")
    parser.add_argument("--parquet_video_type", choices=("binary", "struct"), default="binary", help="parquet layout only: plain mp4 bytes, or the {bytes, path} struct of HF datasets (the labelled layout always writes the struct).")
    parser.add_argument("--rows_per_shard", type=int, default=2, help="parquet and labelled layouts: videos per parquet shard.")
    parser.add_argument("--num_validation_panoramas", type=int, default=0, help="Also write this many PNG panoramas into <output_dir>/validation_panoramas.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the rooms; the same seed writes the same dataset.")
    args = parser.parse_args(argv)
    # Checked before any room is rendered: a typo costs nothing.
    for flag in ("step", "texture_scale"):
        if not getattr(args, flag) > 0:
            parser.error(f"--{flag} must be positive, got {getattr(args, flag)}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    written = write_genex_db(
        args.output_dir, args.layout, args.scene_types, args.videos_per_scene, args.num_frames,
        args.width, args.height, args.seed, args.fps, args.parquet_video_type, args.rows_per_shard, args.step, args.texture_scale,
    )
    for scene_type, paths in written.items():
        print(f"{scene_type}: {len(paths)} file(s) in {paths[0].parent if paths else args.output_dir}")
    if args.num_validation_panoramas:
        paths = write_validation_panoramas(Path(args.output_dir) / "validation_panoramas", args.num_validation_panoramas, args.width, args.width // 2, args.seed,
                                           args.texture_scale)
        print(f"validation panoramas: {len(paths)} in {paths[0].parent}")


if __name__ == "__main__":
    run_cli(main)
