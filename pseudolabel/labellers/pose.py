"""Human poses from MediaPipe Pose (BlazePose, arXiv 2006.10204): 33 body keypoints per person.

We use the legacy ``mediapipe.solutions.pose.Pose`` of ``mediapipe==0.10.21``, the last release whose
wheel bundles the pose models (``mediapipe/modules/pose_landmark/*.tflite``), so labelling runs
offline with no weights to fetch. That release needs numpy<2, so it lives in its own environment
(``pip install 'fourm[pose]'``; ``.ci/pose`` builds one for the tests), and this module imports
mediapipe only inside :meth:`PoseLabeller.setup` and :meth:`PoseLabeller.available`.

Limits of the legacy solution, inherited here:

* **One person per image.** It returns the landmarks of the most prominent person only; crowds
  yield one entry, never several. The value is still a list (the ``human_poses`` convention of
  :mod:`fourm.modalities`), holding zero or one person.
* Only the ``full`` landmark model (``model_complexity=1``) is in the wheel; 0 (lite) and 2 (heavy)
  are downloaded from GitHub by mediapipe on first :meth:`~PoseLabeller.setup`.

Output per person: ``{"box": [x0, y0, x1, y1], "keypoints": [[x, y, visibility], ...]}`` with the
33 keypoints in BlazePose order (0 nose, 2/5 left/right eye, 11/12 left/right shoulder, ... 32 right
foot index; "left" is the person's left). The model extrapolates body parts outside the frame (the
legs of a portrait); their coordinates are clipped to [0, 1] and their visibility is low. The box is
the extent of the keypoints with ``visibility >= min_visibility`` (all keypoints if none are).
"""

from __future__ import annotations

import numpy as np

from pseudolabel.labellers.base import Labeller, labeller

NUM_KEYPOINTS = 33
_MISSING = "mediapipe is not installed: pip install 'fourm[pose]' in its own environment (needs numpy<2)"


@labeller
class PoseLabeller(Labeller):
    """MediaPipe Pose on each ``rgb`` image (``np.uint8 (H, W, 3)``); at most one person per image.

    Args:
        model_complexity: landmark model, 0 lite / 1 full / 2 heavy; only 1 ships in the wheel.
        min_detection_confidence: person-detector score below which the image has no person.
        static_image_mode: treat images as unrelated (run the detector on each). False tracks the
            previous image's pose, which only makes sense for video frames in order.
        min_visibility: keypoints at least this visible define the box.
    """

    name = "human_poses"
    needs = ("rgb",)
    produces = ("human_poses",)
    default = False  # optional package in a separate environment
    exact = False

    model_complexity: int = 1
    min_detection_confidence: float = 0.5
    static_image_mode: bool = True
    min_visibility: float = 0.5

    def __post_init__(self):
        if self.model_complexity not in (0, 1, 2):
            raise ValueError(f"model_complexity must be 0, 1 or 2, got {self.model_complexity}")
        for key in ("min_detection_confidence", "min_visibility"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"{key} must lie in [0, 1], got {getattr(self, key)}")

    @classmethod
    def available(cls) -> tuple[bool, str]:
        try:
            import mediapipe
        except ImportError:
            return False, _MISSING
        try:
            from mediapipe.python.solutions import pose  # noqa: F401  (gone from later releases)
        except ImportError:
            return False, (
                f"mediapipe {getattr(mediapipe, '__version__', '?')} lacks the legacy pose "
                "solution: install mediapipe==0.10.21"
            )
        return True, ""

    def setup(self, classes: dict[str, list[str]]) -> None:
        ok, reason = self.available()
        if not ok:
            raise RuntimeError(reason)
        from mediapipe.python.solutions import pose

        # Not a dataclass field: settings() would try to copy the graph.
        self._pose = pose.Pose(
            static_image_mode=self.static_image_mode,
            model_complexity=self.model_complexity,
            min_detection_confidence=self.min_detection_confidence,
            enable_segmentation=False,
        )

    def label(self, samples: list[dict]) -> list[dict]:
        if getattr(self, "_pose", None) is None:
            raise RuntimeError("call setup() before label()")
        return [{"human_poses": self._people(sample["rgb"])} for sample in samples]

    def _people(self, rgb: np.ndarray) -> list[dict]:
        rgb = np.asarray(rgb)
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"expected rgb as uint8 (H, W, 3), got {rgb.dtype} {rgb.shape}")
        result = self._pose.process(np.ascontiguousarray(rgb))
        if result.pose_landmarks is None:
            return []
        return [self._person(result.pose_landmarks.landmark)]

    def _person(self, landmarks) -> dict:
        # (K, 3): x, y normalised by width and height; visibility a probability
        points = np.array([[p.x, p.y, p.visibility] for p in landmarks], dtype=np.float64)
        if points.shape != (NUM_KEYPOINTS, 3):
            raise RuntimeError(f"expected {NUM_KEYPOINTS} landmarks, got {points.shape[0]}")
        points[:, :2] = np.clip(points[:, :2], 0.0, 1.0)
        points[:, 2] = np.clip(points[:, 2], 0.0, 1.0)
        seen = points[points[:, 2] >= self.min_visibility, :2]
        if len(seen) == 0:
            seen = points[:, :2]
        box = [*seen.min(axis=0), *seen.max(axis=0)]
        return {
            "box": [round(float(v), 4) for v in box],
            "keypoints": [[round(float(x), 4), round(float(y), 4), round(float(v), 3)] for x, y, v in points],
        }
