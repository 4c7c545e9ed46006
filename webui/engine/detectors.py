"""Depth and pose maps for ControlNet, made by detector models the artist provides.

A detector is a transformers model folder (config.json, model.safetensors and usually
preprocessor_config.json) under models/ControlNet-preprocessors/; its kind is read from its
config:

- depth: any depth-estimation model (DPT, Depth Anything, GLPN, ZoeDepth, Depth Pro, ...). The map
  is white where the scene is near and black where it is far, the convention depth ControlNets are
  trained on. Relative models predict inverse depth, which already is that way round; models that
  predict metric depth (metres) are inverted.
- pose: a ViTPose keypoint model. The map is the 18-point body skeleton, in the colours pose
  ControlNets are trained on, on black. A `person-detector/` folder inside it, holding an
  object-detection model whose labels include "person", finds each person first (top-down pose
  estimation needs one box per person); without it the whole picture is one person.

Listing (`list_detectors`, `find_detector`) reads only JSON, so the studio can list detectors
without importing torch; `Detectors` loads and runs them, keeping the loaded ones between jobs.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from .models import is_pickle

# torch and transformers load inside the methods: the engine's public face imports this module.

DETECTOR_SUBDIR = "ControlNet-preprocessors"
KINDS = ("depth", "pose")
PERSON_DETECTOR = "person-detector"
# Depth models whose output is metric depth (far = large), not inverse depth.
_METRIC_DEPTH = {"zoedepth", "depth_pro", "glpn", "prompt_depth_anything"}
# Keypoints drawn below this confidence would put limbs where the model only guessed.
KEYPOINT_THRESHOLD = 0.3
PERSON_THRESHOLD = 0.5

# The 18-point body layout pose ControlNets read: nose, neck, right arm (shoulder, elbow, wrist),
# left arm, right leg (hip, knee, ankle), left leg, right eye, left eye, right ear, left ear.
# Each entry is the COCO keypoint index (the order ViTPose predicts), or None for the neck,
# which is the middle of the shoulders.
_BODY_FROM_COCO = (0, None, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3)
# Limbs as pairs of body points, each drawn in the colour of its index.
_LIMBS = ((1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11),
          (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17))
_COLOURS = ((255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
            (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
            (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85))


# -- finding detectors (JSON only) -----------------------------------------------------------


def _config(folder: Path) -> dict:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def detector_kind(folder) -> str | None:
    """'depth', 'pose' or None, from the model folder's config.json."""
    config = _config(Path(folder))
    names = " ".join(str(a) for a in config.get("architectures") or [])
    model_type = str(config.get("model_type", ""))
    if "DepthEstimation" in names or model_type in _METRIC_DEPTH | {"dpt", "depth_anything"}:
        return "depth"
    if "PoseEstimation" in names or model_type == "vitpose":
        return "pose"
    return None


def list_detectors(root) -> dict[str, tuple[str, Path]]:
    """Detector name (its folder under `root`) -> (kind, folder), sorted by name."""
    root = Path(root)
    found: dict[str, tuple[str, Path]] = {}
    if not root.is_dir():
        return found
    for config in sorted(root.rglob("config.json")):
        folder = config.parent
        if PERSON_DETECTOR in folder.relative_to(root).parts:
            continue  # part of the pose model above it
        kind = detector_kind(folder)
        if kind is not None:
            found[folder.relative_to(root).as_posix()] = (kind, folder)
    return found


def find_detector(root, kind: str, name: str = "") -> Path:
    """The folder of detector `name` (a name under `root`, or a folder path); an empty name
    picks the first detector of `kind`. ValueError says what is missing and where it goes."""
    if kind not in KINDS:
        raise ValueError(f"{kind!r} needs no detector model; detectors are for: "
                         + ", ".join(KINDS))
    root = Path(root)
    available = list_detectors(root)
    name = (name or "").strip()
    what = {"depth": "a depth-estimation model (DPT, Depth Anything, ...)",
            "pose": "a ViTPose keypoint model"}[kind]
    if not name:
        for found_kind, folder in available.values():
            if found_kind == kind:
                return folder
        raise ValueError(f"preprocessor {kind!r} needs {what}: put its transformers folder "
                         f"(config.json and model.safetensors) in {root}/")
    if name in available:
        found_kind, folder = available[name]
    else:
        folder = Path(name).expanduser()
        found_kind = detector_kind(folder) if folder.is_dir() else None
        if found_kind is None:
            listed = ", ".join(available) or "none yet"
            raise ValueError(f"no detector model {name!r} (available in {root}: {listed})")
    if found_kind != kind:
        raise ValueError(f"{name} is a {found_kind} model, not {what}")
    return folder


# -- drawing ---------------------------------------------------------------------------------


def depth_picture(depth, invert: bool = False):
    """A depth prediction (H, W) as a grey RGB picture: near white, far black."""
    from PIL import Image

    depth = np.nan_to_num(np.asarray(depth, dtype=np.float64))
    lo, hi = float(depth.min()), float(depth.max())
    scaled = (depth - lo) / (hi - lo) if hi > lo else np.zeros_like(depth)
    if invert:
        scaled = 1.0 - scaled
    grey = (scaled * 255).round().astype(np.uint8)
    return Image.fromarray(np.stack([grey] * 3, axis=-1), "RGB")


def body_points(keypoints, scores, threshold: float = KEYPOINT_THRESHOLD) -> list:
    """COCO keypoints (17, 2) with scores as the 18 body points ((x, y) or None when unsure)."""
    keypoints = np.asarray(keypoints, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    sure = [bool(s >= threshold) for s in scores]
    points = []
    for coco in _BODY_FROM_COCO:
        if coco is None:
            # The neck: between the shoulders, when both are seen.
            points.append(tuple((keypoints[5] + keypoints[6]) / 2) if sure[5] and sure[6]
                          else None)
        else:
            points.append(tuple(keypoints[coco]) if sure[coco] else None)
    return points


def pose_picture(size: tuple[int, int], people: list[list]):
    """The skeletons of `people` (each 18 body points, see body_points) on black, at `size`."""
    from PIL import Image, ImageDraw

    width, height = size
    # Line widths as pose ControlNets saw them at 512 px, scaled with the picture.
    stick = max(2.0, 4.0 * max(width, height) / 512)
    canvas = Image.new("RGB", size, (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    for points in people:
        # Limbs at 60 % of their colour, joints on top at full colour.
        for index, (a, b) in enumerate(_LIMBS):
            if points[a] is not None and points[b] is not None:
                draw.polygon(_ellipse(points[a], points[b], stick),
                             fill=tuple(int(c * 0.6) for c in _COLOURS[index]))
        for index, point in enumerate(points):
            if point is not None:
                x, y = point
                draw.ellipse((x - stick, y - stick, x + stick, y + stick), fill=_COLOURS[index])
    return canvas


def _ellipse(a, b, half_width: float, corners: int = 24) -> list[tuple[float, float]]:
    """The outline of the ellipse spanning points a and b, `half_width` thick either side."""
    (xa, ya), (xb, yb) = a, b
    cx, cy = (xa + xb) / 2, (ya + yb) / 2
    half_length = max(np.hypot(xb - xa, yb - ya) / 2, half_width)
    angle = np.arctan2(yb - ya, xb - xa)
    t = np.linspace(0, 2 * np.pi, corners, endpoint=False)
    x, y = half_length * np.cos(t), half_width * np.sin(t)
    return [(cx + xi * np.cos(angle) - yi * np.sin(angle),
             cy + xi * np.sin(angle) + yi * np.cos(angle)) for xi, yi in zip(x, y)]


# -- running detectors -----------------------------------------------------------------------


class Detectors:
    """Loaded detector models, kept between jobs (the least recently used beyond `keep` is
    dropped). Thread-safe: the studio's previews and the engine's jobs share one cache.

    device: where the models run; they run in fp16 on CUDA and fp32 elsewhere (they are small
    next to the diffusion model, and one copy serves jobs of every precision).
    """

    def __init__(self, device: str = "cpu", keep: int = 2):
        self.device = str(device)
        self.keep = keep
        self._models: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self.load_calls = 0  # models read from disk; tests use it to see reloads

    def control_map(self, folder, kind: str, image):
        """The `kind` ('depth' or 'pose') map of `image` (PIL) at its own size, made by the
        model in `folder`. ValueError says why a model cannot be used."""
        if kind not in KINDS:
            raise ValueError(f"unknown detector kind {kind!r}")
        folder = Path(folder)
        image = image.convert("RGB")
        with self._lock:
            loaded = self._get(folder, kind)
            if kind == "depth":
                return self._depth(loaded, image)
            return self._pose(loaded, image)

    def _get(self, folder: Path, kind: str) -> dict:
        key = str(folder.resolve())
        stamp = _stamp(folder)
        hit = self._models.pop(key, None)
        if hit is not None and hit["stamp"] == stamp:
            self._models[key] = hit
            return hit
        found = detector_kind(folder)
        if found != kind:
            what = f"a {found} model" if found else "not a depth or pose model"
            raise ValueError(f"{folder.name} is {what}, so it cannot make a {kind} map")
        loaded = {"stamp": stamp, "kind": kind}
        if kind == "depth":
            from transformers import AutoModelForDepthEstimation

            loaded["processor"], loaded["model"] = self._read(folder, AutoModelForDepthEstimation)
            config = _config(folder)
            loaded["invert"] = (config.get("model_type") in _METRIC_DEPTH
                                or config.get("depth_estimation_type") == "metric")
        else:
            from transformers import VitPoseForPoseEstimation

            loaded["processor"], loaded["model"] = self._read(folder, VitPoseForPoseEstimation)
            people = folder / PERSON_DETECTOR
            loaded["people"] = None
            if (people / "config.json").is_file():
                from transformers import AutoModelForObjectDetection

                processor, model = self._read(people, AutoModelForObjectDetection)
                labels = {int(k): str(v).lower() for k, v in model.config.id2label.items()}
                person = [k for k, v in labels.items() if v == "person"]
                if not person:
                    raise ValueError(f"the person detector in {people} has no 'person' label")
                loaded["people"] = (processor, model, person[0])
        self._models[key] = loaded
        while len(self._models) > max(self.keep, 1):
            self._models.popitem(last=False)
        return loaded

    def _read(self, folder: Path, model_class):
        import torch
        from transformers import AutoImageProcessor

        weights = sorted(folder.glob("*.safetensors"))
        if not weights:
            pickles = [p.name for p in folder.iterdir() if is_pickle(p)]
            raise ValueError(f"{folder} has no .safetensors weights"
                             + (f" ({', '.join(pickles)} are pickles, which can run code when "
                                "opened, so they are refused)" if pickles else ""))
        dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
        self.load_calls += 1
        try:
            processor = AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)
            model = model_class.from_pretrained(str(folder), dtype=dtype, use_safetensors=True,
                                                local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - a damaged or foreign folder
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"could not load the detector model in {folder} ({text[:200]})") \
                from None
        return processor, model.to(self.device).eval()

    def _inputs(self, processor, model, **kwargs):
        inputs = processor(return_tensors="pt", **kwargs)
        dtype = next(model.parameters()).dtype
        return {k: (v.to(self.device, dtype) if v.is_floating_point() else v.to(self.device))
                for k, v in inputs.items()}

    def _depth(self, loaded: dict, image):
        import torch

        processor, model = loaded["processor"], loaded["model"]
        with torch.no_grad():
            outputs = model(**self._inputs(processor, model, images=image))
        size = (image.height, image.width)
        if hasattr(processor, "post_process_depth_estimation"):
            depth = processor.post_process_depth_estimation(outputs, target_sizes=[size])[0]
            depth = depth["predicted_depth"]
        else:
            depth = torch.nn.functional.interpolate(outputs.predicted_depth[:, None].float(),
                                                    size=size, mode="bicubic")[0, 0]
        return depth_picture(depth.float().cpu().numpy(), invert=loaded["invert"])

    def _pose(self, loaded: dict, image):
        import torch

        processor, model = loaded["processor"], loaded["model"]
        boxes = self._people(loaded["people"], image) if loaded["people"] else []
        if not boxes:
            boxes = [[0.0, 0.0, float(image.width), float(image.height)]]
        with torch.no_grad():
            outputs = model(**self._inputs(processor, model, images=image, boxes=[boxes]))
        found = processor.post_process_pose_estimation(outputs, boxes=[boxes])[0]
        people = []
        for person in found:
            keypoints = person["keypoints"].float().cpu().numpy()
            if len(keypoints) < 17:
                raise ValueError(f"the pose model gives {len(keypoints)} keypoints; a pose map "
                                 "needs the 17 body keypoints of COCO")
            people.append(body_points(keypoints[:17], person["scores"].float().cpu().numpy()[:17]))
        return pose_picture(image.size, people)

    def _people(self, detector, image) -> list[list[float]]:
        """Person boxes as (x, y, width, height), the layout the pose processor reads."""
        import torch

        processor, model, person = detector
        with torch.no_grad():
            outputs = model(**self._inputs(processor, model, images=image))
        found = processor.post_process_object_detection(
            outputs, threshold=PERSON_THRESHOLD, target_sizes=[(image.height, image.width)])[0]
        boxes = []
        for label, box in zip(found["labels"].tolist(), found["boxes"].float().cpu().tolist()):
            x0, y0, x1, y1 = (max(0.0, v) for v in box)
            if label == person and x1 - x0 >= 1 and y1 - y0 >= 1:
                boxes.append([x0, y0, x1 - x0, y1 - y0])
        return boxes


def _stamp(folder: Path) -> tuple:
    """Changes when any weight file in the folder (or its person detector) changes."""
    files = sorted(folder.glob("*.safetensors")) + sorted(folder.glob(f"{PERSON_DETECTOR}/*"))
    return tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in files if p.is_file())
