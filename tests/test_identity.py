"""The identity model on real photos: same person or not, several faces, no face, coordinates, masks."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image, ImageOps

from likeness.identity import (
    IDENTITY_THRESHOLD,
    Face,
    FaceIdentityModel,
    NoFaceInReference,
    get_identity_model,
    identity_distance,
    main_face,
    reference_face,
)
from likeness.inputs import InvalidInput
from likeness.media.masks import face_mask
from tests.photos import astronaut, grace_hopper, no_face_photo, side_by_side


@pytest.fixture(scope="module")
def model() -> FaceIdentityModel:
    return get_identity_model()


@pytest.fixture(scope="module")
def astronaut_face(model: FaceIdentityModel) -> Face:
    return reference_face(astronaut(), "astronaut.png", model)[0]


def test_different_people_are_above_the_threshold(model: FaceIdentityModel, astronaut_face: Face) -> None:
    hopper = reference_face(grace_hopper(), "grace_hopper.jpg", model)[0]
    distance = identity_distance(astronaut_face.embedding, hopper.embedding)
    print(f"astronaut vs Grace Hopper: {distance:.3f}")
    assert distance > IDENTITY_THRESHOLD


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(ImageOps.mirror, id="mirror"),
        pytest.param(lambda image: image.resize((1024, 1024), Image.Resampling.LANCZOS), id="enlarged"),
        pytest.param(lambda image: image.resize((256, 256), Image.Resampling.LANCZOS), id="shrunk"),
        pytest.param(lambda image: image.crop((60, 20, 420, 380)), id="shifted-crop"),
        pytest.param(lambda image: image.convert("L"), id="grey"),
    ],
)
def test_the_same_person_is_below_the_threshold(model: FaceIdentityModel, astronaut_face: Face, change) -> None:
    face, _ = reference_face(change(astronaut()), "changed.png", model)
    distance = identity_distance(astronaut_face.embedding, face.embedding)
    print(f"astronaut vs changed copy: {distance:.3f}")
    assert distance < IDENTITY_THRESHOLD


def test_faces_are_in_the_given_images_pixels(model: FaceIdentityModel, astronaut_face: Face) -> None:
    enlarged = main_face(model.faces(astronaut().resize((1024, 1024), Image.Resampling.LANCZOS)))
    assert enlarged is not None
    assert len(astronaut_face.embedding) == 128
    assert len(astronaut_face.landmarks) == 5
    left, top, right, bottom = astronaut_face.box
    assert 60 < right - left < 130 and 150 < left < 200 and 50 < top < 110
    assert all(left <= x <= right and top <= y <= bottom for x, y in astronaut_face.landmarks)
    for small, large in zip(astronaut_face.box, enlarged.box, strict=True):
        assert abs(2 * small - large) <= 12


def test_a_stray_detection_as_large_as_the_face_is_not_the_main_face(
    model: FaceIdentityModel, astronaut_face: Face
) -> None:
    # Mirrored, the astronaut's flag patch is detected as a face as large as hers, but with a low score.
    faces = model.faces(ImageOps.mirror(astronaut()))
    assert len(faces) == 2
    assert [face.area for face in faces] == sorted((face.area for face in faces), reverse=True)
    face = main_face(faces)
    assert face is not None and face is not faces[0] and face.score > faces[0].score
    assert identity_distance(face.embedding, astronaut_face.embedding) < IDENTITY_THRESHOLD
    _, warning = reference_face(ImageOps.mirror(astronaut()), "mirrored.png", model)
    assert warning is None


def test_several_faces_give_the_largest_and_a_warning(model: FaceIdentityModel, astronaut_face: Face) -> None:
    # Grace Hopper's face is about twice as wide as the astronaut's.
    face, warning = reference_face(side_by_side(astronaut(), grace_hopper()), "pair.png", model)
    hopper = reference_face(grace_hopper(), "grace_hopper.jpg", model)[0]
    # Pasted beside another photo the face is found in other pixels: the same person, well under 0.6 (0.11 measured).
    assert identity_distance(face.embedding, hopper.embedding) < 0.2
    assert face.box[0] >= 512  # in the right half, where Grace Hopper was pasted
    assert warning == "pair.png shows 2 faces: the largest is used as the character's identity"


def test_no_face_in_the_reference_says_how_to_proceed(model: FaceIdentityModel) -> None:
    assert model.faces(no_face_photo()) == []
    with pytest.raises(NoFaceInReference) as caught:
        reference_face(no_face_photo(), "coffee.png", model)
    assert isinstance(caught.value, InvalidInput)
    assert "no face found in coffee.png" in str(caught.value)
    assert "--no-identity" in str(caught.value)


def test_identity_distance_is_euclidean() -> None:
    assert identity_distance([0.0, 3.0], [4.0, 0.0]) == 5.0
    with pytest.raises(ValueError, match="differ in length: 2 and 3"):
        identity_distance([0.0, 0.0], [0.0, 0.0, 0.0])


def test_the_model_is_loaded_once_per_process() -> None:
    start = threading.Barrier(4)

    def load(_: int) -> FaceIdentityModel:
        start.wait()
        return get_identity_model()

    with ThreadPoolExecutor(4) as pool:
        assert len({id(model) for model in pool.map(load, range(4))}) == 1


def test_missing_model_files_are_named(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=f"shape_predictor_5_face_landmarks.dat not found in {tmp_path}"):
        FaceIdentityModel(tmp_path)


def test_face_mask_is_white_over_the_face_and_black_elsewhere(astronaut_face: Face) -> None:
    mask = face_mask((512, 512), astronaut_face)
    assert mask.mode == "L" and mask.size == (512, 512)
    pixels = np.asarray(mask)
    left, top, right, bottom = astronaut_face.box
    assert pixels[(top + bottom) // 2, (left + right) // 2] == 255
    assert all(pixels[y, x] == 255 for x, y in astronaut_face.landmarks)
    assert pixels[top - 20, (left + right) // 2] == 255  # hair above the box
    assert pixels[bottom + 5, (left + right) // 2] > 128  # chin and jaw below it
    assert pixels[500, 10] == 0 and pixels[10, 500] == 0
    # Feathered: the weight fades in over several pixels rather than stepping.
    assert np.count_nonzero((pixels > 0) & (pixels < 255)) > 1000


def test_face_mask_follows_a_tilted_head(model: FaceIdentityModel) -> None:
    tilted = astronaut().rotate(30, expand=True)
    face = main_face(model.faces(tilted))
    assert face is not None
    pixels = np.asarray(face_mask(tilted.size, face))
    assert all(pixels[y, x] == 255 for x, y in face.landmarks)
    # Rotated counter-clockwise, the top of the head leans left of the box's centre column.
    left, top, right, _ = face.box
    centre = (left + right) // 2
    row = pixels[top - 25]
    assert row[centre - 30] > row[centre + 30]


def test_face_mask_without_a_face_weights_everything_equally() -> None:
    mask = face_mask((640, 360), None)
    assert mask.mode == "L" and mask.size == (640, 360)
    assert mask.getextrema() == (255, 255)


@pytest.mark.parametrize(("side", "passes"), [(128, [0]), (511, [0]), (512, [0, 1]), (1600, [0, 1])])
def test_the_upsampled_search_runs_only_where_it_can_find_a_face_big_enough_to_tell(side: int, passes: list[int]):
    model = FaceIdentityModel()
    detector, calls = model._detector, []

    class Counted:
        def run(self, pixels: np.ndarray, upsample: int, threshold: float):
            calls.append(upsample)
            return detector.run(pixels, upsample, threshold)

    model._detector = Counted()
    noise = np.random.default_rng(0).integers(0, 256, (side * 3 // 4, side, 3), dtype=np.uint8)
    assert model.faces(Image.fromarray(noise)) == []
    assert calls == passes
    # A face the first pass finds ends the search there, whatever the size.
    calls.clear()
    assert model.faces(astronaut()) and calls == [0]


def test_the_same_pixels_are_searched_once_and_the_oldest_answers_are_forgotten(monkeypatch) -> None:
    import likeness.identity

    model = FaceIdentityModel()
    detector, calls = model._detector, []

    class Counted:
        def run(self, pixels: np.ndarray, upsample: int, threshold: float):
            calls.append(pixels.shape)
            return detector.run(pixels, upsample, threshold)

    model._detector = Counted()
    photo = astronaut()
    first = model.faces(photo)
    assert first and len(calls) == 1
    # The same pixels in another mode, as a stage reloads them from the store: answered without a search, equal.
    assert model.faces(photo.convert("RGBA")) == first and len(calls) == 1
    changed = photo.copy()
    changed.putpixel((0, 0), (0, 0, 0))
    assert model.faces(changed) and len(calls) == 2

    monkeypatch.setattr(likeness.identity, "REMEMBERED_SEARCHES", 2)
    small = [Image.new("RGB", (64, 48), (shade, shade, shade)) for shade in (10, 20)]
    for image in small:
        assert model.faces(image) == []
    assert len(calls) == 4
    model.faces(photo)  # forgotten: two newer images were searched since
    assert len(calls) == 5
    model.faces(small[1])
    assert len(calls) == 5
