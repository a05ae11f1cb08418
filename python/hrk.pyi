"""Type stubs of the `hrk` extension module (HRNetV2 facial landmarks, hrk's Rust engine)."""
import os
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

__version__: str

PathLike = Union[str, "os.PathLike[str]"]
# A NumPy uint8 array HxWx3 (RGB), HxWx4 (RGBA, alpha ignored) or HxW (grey), a path, or a PIL.Image.
ImageLike = Union[npt.NDArray[np.uint8], PathLike, Any]
Box = Tuple[float, float, float, float]

class Face:
    """One face, in original-image pixels."""

    @property
    def box(self) -> Tuple[float, float, float, float]:
        """(x1, y1, x2, y2)."""
    @property
    def score(self) -> Optional[float]:
        """The detector's confidence; None for given boxes and the whole image."""
    @property
    def landmarks(self) -> npt.NDArray[np.float32]:
        """K x 2 (x, y)."""
    @property
    def landmark_scores(self) -> npt.NDArray[np.float32]:
        """K heatmap maxima."""
    @property
    def pose(self) -> Optional[dict[str, float]]:
        """{"yaw", "pitch", "roll"} in degrees; None for layouts without pose points."""
    @property
    def id(self) -> Optional[int]:
        """The track id in `Model.track`; None otherwise."""
    def to_json(self) -> str:
        """The face exactly as `hrk predict` writes it in its JSON."""

class Model:
    """A landmark model. Calls release the GIL; one Model runs its calls one at a time (a lock)."""

    def __init__(
        self,
        cfg: PathLike,
        weights: PathLike,
        device: str = "cpu",
        precision: str = "f32",
        batch: Optional[int] = None,
    ) -> None: ...
    @property
    def num_landmarks(self) -> int: ...
    @property
    def input_size(self) -> Tuple[int, int]: ...
    @property
    def device(self) -> str: ...
    @property
    def precision(self) -> str: ...
    def predict(
        self,
        image: ImageLike,
        boxes: Optional[Sequence[Box]] = None,
        detector: bool = True,
        flip_test: bool = False,
        decode: Optional[str] = None,
        min_face: float = 20.0,
        thresholds: Tuple[float, float, float] = (0.6, 0.7, 0.7),
    ) -> list[Face]: ...
    def predict_batch(self, images: Iterable[ImageLike], boxes: Optional[Sequence[Box]] = None, detector: bool = True,
                      flip_test: bool = False, decode: Optional[str] = None, min_face: float = 20.0,
                      thresholds: Tuple[float, float, float] = (0.6, 0.7, 0.7)) -> list[list[Face]]:
        """`predict` over several images (their faces share forward passes; the same results)."""
    def track(
        self,
        frames: Iterable[ImageLike],
        fps: float = 30.0,
        redetect: int = 30,
        smooth: str = "0.5,0.05",
        detector: bool = True,
        min_face: float = 20.0,
        thresholds: Tuple[float, float, float] = (0.6, 0.7, 0.7),
    ) -> TrackedFrames:
        """Tracked faces per frame, as `hrk predict --stdin-frames`: each `next()` pulls one frame
        from `frames` (endless iterables too) and gives its faces, ids set. The Model's lock is held
        only while a frame runs: other calls on the Model may run between frames. A bad frame or an
        error of `frames` raises from `next()` and ends the stream."""
    def heatmaps(self, crops: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """N x 3 x H x W normalised crops -> N x K x h x w heatmaps."""

class TrackedFrames(Iterator[list[Face]]):
    """What `Model.track` returns: one frame pulled and run per `next()`."""

    def __iter__(self) -> TrackedFrames: ...
    def __next__(self) -> list[Face]: ...

class FaceAlignment:
    """face_alignment's interface over an hrk model."""

    def __init__(self, cfg: PathLike, weights: PathLike, device: str = "cpu", precision: str = "f32",
                 flip_input: bool = False) -> None: ...
    def get_landmarks(
        self,
        image_or_path: ImageLike,
        detected_faces: Optional[Sequence[Sequence[float]]] = None,
        return_bboxes: bool = False,
        return_landmark_score: bool = False,
    ) -> Any:
        """A list of K x 2 float32 arrays (one per face) or None; with return_bboxes or
        return_landmark_score a tuple (landmarks, landmark_scores, bboxes)."""
    get_landmarks_from_image = get_landmarks

def detect(
    image: ImageLike, min_face: float = 20.0, thresholds: Tuple[float, float, float] = (0.6, 0.7, 0.7)
) -> list[dict[str, Any]]:
    """MTCNN faces: [{"box": (x1, y1, x2, y2), "score": float, "points": 5 x 2 float32}]."""

def evaluate(
    cfg: PathLike,
    weights: PathLike,
    *,
    testset: Optional[PathLike] = None,
    device: str = "cpu",
    precision: str = "f32",
    batch: Optional[int] = None,
    workers: Optional[int] = None,
    flip_test: bool = False,
    shift_heatmap: bool = False,
    decode: Optional[str] = None,
) -> dict[str, float]:
    """{"nme", "fr_008", "fr_010", "auc_008", "auc_010", "images", "loss"} as `hrk test` computes them."""

def train(
    cfg: PathLike,
    seed: Optional[int] = None,
    on_epoch: Optional[Callable[[dict[str, Any]], None]] = None,
    *,
    device: str = "cpu",
    stop_after_epochs: Optional[int] = None,
) -> dict[str, Any]:
    """`hrk train` (blocking); on_epoch gets each epoch's metrics; Ctrl-C raises KeyboardInterrupt
    with the finished epochs' checkpoints intact."""
