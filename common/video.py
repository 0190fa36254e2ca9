"""Video decoding and encoding shared by both pipelines (PyAV, no per-frame seeking)."""

import io
import os
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import av
import numpy as np

VideoSource = Union[str, os.PathLike, bytes]


class VideoDecodeError(RuntimeError):
    """A video that cannot be opened or decoded; the message names the source and the cause."""


def _describe(source: VideoSource) -> str:
    return f"<{len(source)} bytes>" if isinstance(source, (bytes, bytearray)) else str(source)


def declared_frame_count(container, stream) -> int:
    """The frame count the file's header declares (0 when it declares none)."""
    if stream.frames:
        return stream.frames
    if container.duration and stream.average_rate:
        return round(container.duration / av.time_base * float(stream.average_rate))
    return 0


def still_image_format(container) -> Optional[str]:
    """The image format when FFmpeg opened a still image (a PNG or JPEG named .mp4) as a one-frame video, else None."""
    name = container.format.name
    if name in ("image2", "image2pipe") or name.endswith("_pipe"):
        return name.removesuffix("_pipe")
    if name == "gif" and all(stream.frames <= 1 for stream in container.streams.video):
        return name
    return None


def video_stream(container, name: str):
    """The first video stream; a still image or a file without video is a VideoDecodeError naming `name`."""
    image_format = still_image_format(container)
    if image_format:
        raise VideoDecodeError(f"{name}: is an image ({image_format}), not a video")
    if not container.streams.video:
        raise VideoDecodeError(f"{name}: no video stream")
    return container.streams.video[0]


def is_truncated(decoded: int, declared: int) -> bool:
    """Far fewer frames than the header declares: the file was cut (a few frames of slack for rounding)."""
    return declared > 0 and decoded < declared - max(2, declared // 10)


def iter_video_frames(source: VideoSource) -> Iterator[np.ndarray]:
    """Yield every frame of a video as RGB uint8 [H, W, 3], decoding once from front to back.

    A file cut mid-stream decodes its first frames without complaint; it is caught at the end
    by comparing with the header's frame count, so no caller mistakes it for a short video.
    """
    name = _describe(source)
    handle = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else str(source)
    try:
        container = av.open(handle)
    except (av.FFmpegError, OSError, ValueError) as error:
        raise VideoDecodeError(f"{name}: cannot open video ({error})") from None
    with container:
        stream = video_stream(container, name)
        stream.thread_type = "AUTO"
        decoded = 0
        try:
            for frame in container.decode(stream):
                decoded += 1
                yield frame.to_ndarray(format="rgb24")
        except (av.FFmpegError, OSError, ValueError) as error:
            raise VideoDecodeError(f"{name}: decoding failed ({error})") from None
        declared = declared_frame_count(container, stream)
        if decoded == 0:
            raise VideoDecodeError(f"{name}: no frame could be decoded")
        if is_truncated(decoded, declared):
            raise VideoDecodeError(f"{name}: truncated, decoded {decoded} of the {declared} frames its header declares")


def evenly_spaced_indices(num_available: int, num_wanted: int) -> list[int]:
    """Indices of `num_wanted` frames spread over the whole video, first and last included.

    A video with fewer frames than wanted keeps all of them.
    """
    if num_available <= num_wanted:
        return list(range(num_available))
    if num_wanted == 1:
        return [0]
    return [round(i * (num_available - 1) / (num_wanted - 1)) for i in range(num_wanted)]


# x264's asynchronous lookahead (rate control and macroblock tree) wrote different bytes for the same frames from run to
# run, so a synthetic dataset, and every model fitted to it, changed between runs of one seed: H.264 is encoded without it.
X264_REPEATABLE = "rc-lookahead=0:no-mbtree=1"


def write_mp4(frames: Sequence[np.ndarray], path: Union[str, os.PathLike], fps: float = 7.0, crf: int = 18) -> Path:
    """Write RGB uint8 frames [H, W, 3] as an H.264 mp4 (yuv420p) that any player opens.

    Odd sizes are padded to even by repeating the last row/column, as yuv420p requires.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames[0].shape[:2]
    even_h, even_w = height + height % 2, width + width % 2
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=round(fps))
        stream.width, stream.height, stream.pix_fmt = even_w, even_h, "yuv420p"
        stream.options = {"crf": str(crf), "x264-params": X264_REPEATABLE}
        for frame in frames:
            frame = np.ascontiguousarray(frame, dtype=np.uint8)
            if (even_h, even_w) != (height, width):
                frame = np.pad(frame, ((0, even_h - height), (0, even_w - width), (0, 0)), mode="edge")
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def encode_video_bytes(frames: Sequence[np.ndarray], codec: str = "libx264", fps: float = 12.0, container_format: str = "mp4") -> bytes:
    """Encode RGB uint8 frames into an in-memory video (used for synthetic datasets)."""
    buffer = io.BytesIO()
    height, width = frames[0].shape[:2]
    with av.open(buffer, mode="w", format=container_format) as container:
        options = {"x264-params": X264_REPEATABLE} if codec == "libx264" else {}
        stream = container.add_stream(codec, rate=round(fps), options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame, dtype=np.uint8), format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()
