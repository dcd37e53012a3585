"""Reference photos are read as people see them: oriented, 8-bit sRGB, opaque; oversized files refused undecoded."""

from __future__ import annotations

import hashlib
import io
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageFile

from likeness import inputs
from likeness.inputs import InvalidInput, ReferenceImage, normalise_reference, read_reference_image

GREY = inputs.REFERENCE_BACKGROUND


def encode(image: Image.Image, format: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format, **params)
    return buffer.getvalue()


def decoded(reference: ReferenceImage) -> np.ndarray:
    with Image.open(io.BytesIO(reference.png)) as image:
        assert image.format == "PNG" and image.mode == "RGB"
        assert image.size == (reference.width, reference.height)
        return np.asarray(image).astype(int)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_chunk_types(data: bytes) -> list[bytes]:
    types, at = [], 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        types.append(data[at + 4 : at + 8])
        at += 12 + length
    return types


@pytest.fixture(scope="module")
def huge_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A black 12000x12000 RGB PNG written row by row: small on disk, about 576 MB once Pillow decodes it."""
    side = 12000
    compressor = zlib.compressobj(9)
    rows = (b"\x00" + bytes(3 * side)) * 250
    idat = b"".join(compressor.compress(rows) for _ in range(side // 250)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path = tmp_path_factory.mktemp("huge") / "huge.png"
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
    )
    assert path.stat().st_size < 1_000_000
    return path


def photo_with_marker(size=(400, 300), orientation: int | None = None) -> bytes:
    """A grey JPEG with a red block in the top-left corner of its stored pixels."""
    image = Image.new("RGB", size, (128, 128, 128))
    image.paste((255, 0, 0), (0, 0, 80, 80))
    params = {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        params["exif"] = exif.tobytes()
    return encode(image, "JPEG", quality=95, **params)


def is_red(pixel: np.ndarray) -> bool:
    return pixel[0] > 200 and pixel[1] < 60 and pixel[2] < 60


# --- the refusals that existed before ---------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(InvalidInput, match="reference image not found: .*missing.png"):
        read_reference_image(tmp_path / "missing.png")


def test_folder_is_not_a_file(tmp_path):
    with pytest.raises(InvalidInput, match="reference image is not a file"):
        read_reference_image(tmp_path)


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("hello")
    # Every format it decodes is named, in the order it tries them.
    readable = r"\(PNG, JPEG, WebP, GIF, TIFF, BMP, AVIF\)$"
    with pytest.raises(InvalidInput, match=r"notes.png is not an image Likeness can read " + readable):
        read_reference_image(path)


def test_truncated(tmp_path):
    data = encode(Image.effect_noise((512, 512), 40).convert("RGB"), "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidInput, match="cut.jpg is truncated or corrupt: "):
        read_reference_image(path)


def test_too_small(tmp_path):
    path = tmp_path / "small.png"
    Image.new("RGB", (120, 90), "tan").save(path)
    with pytest.raises(InvalidInput, match="small.png is 120x90 px; a reference photo needs at least 256 px"):
        read_reference_image(path)


def test_garment_and_pose_images_need_what_the_editor_needs_of_a_condition_not_a_face(tmp_path):
    garment = tmp_path / "shirt.png"
    Image.new("RGB", (200, 260), "navy").save(garment)
    assert read_reference_image(garment, "garment image").width == 200
    small = tmp_path / "tiny-pose.png"
    Image.new("RGB", (100, 160), "tan").save(small)
    with pytest.raises(InvalidInput, match=r"tiny-pose.png is 100x160 px; a pose image needs at least 128 px on its"):
        read_reference_image(small, "pose image")
    # The same from the deployment's form, where the image comes as bytes from a store key or a URL.
    with pytest.raises(InvalidInput, match=r"^garment image drop/g.png is 100x160 px; a garment image needs at least"):
        normalise_reference(small.read_bytes(), "garment image drop/g.png", kind="garment image")
    with pytest.raises(InvalidInput, match="a reference photo needs at least 256 px"):
        read_reference_image(garment)


def test_too_small_names_the_oriented_size():
    data = photo_with_marker(size=(300, 200), orientation=6)
    with pytest.raises(InvalidInput, match="photo.jpg is 200x300 px; a reference photo needs at least 256 px"):
        normalise_reference(data, "photo.jpg")


def test_decoders_outside_the_photo_formats_are_not_used():
    data = encode(Image.new("RGB", (300, 300), "tan"), "PPM")
    with pytest.raises(InvalidInput, match="photo.ppm is not an image Likeness can read"):
        normalise_reference(data, "photo.ppm")


# --- images as people see them ----------------------------------------------------------------------------------


def test_plain_rgb_jpeg_has_no_notes(tmp_path):
    data = photo_with_marker()
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
    reference = read_reference_image(path)
    assert reference.notes == ()
    assert (reference.width, reference.height) == (400, 300)
    assert reference.original_sha256 == hashlib.sha256(data).hexdigest()
    assert is_red(decoded(reference)[40, 40])


@pytest.mark.parametrize(
    ("orientation", "marker_corner"),
    [(6, "top-right"), (8, "bottom-left"), (3, "bottom-right")],
)
def test_exif_orientation_is_applied(orientation, marker_corner):
    reference = normalise_reference(photo_with_marker(orientation=orientation), "photo.jpg")
    pixels = decoded(reference)
    height, width, _ = pixels.shape
    assert (width, height) == ((400, 300) if orientation == 3 else (300, 400))
    corners = {
        "top-left": pixels[40, 40],
        "top-right": pixels[40, width - 40],
        "bottom-left": pixels[height - 40, 40],
        "bottom-right": pixels[height - 40, width - 40],
    }
    assert [name for name, pixel in corners.items() if is_red(pixel)] == [marker_corner]
    assert reference.notes == (f"photo.jpg is rotated by its EXIF orientation ({orientation})",)


def test_16_bit_grey_png_keeps_its_gradient():
    gradient = np.tile(np.linspace(0, 65535, 512).round().astype(np.uint16), (300, 1))
    data = encode(Image.fromarray(gradient), "PNG")
    with Image.open(io.BytesIO(data)) as source:
        assert source.mode in {"I;16", "I"}  # what a 16-bit grey PNG opens as
    reference = normalise_reference(data, "photo.png")
    pixels = decoded(reference)
    assert pixels[:, 0].max() <= 1 and pixels[:, -1].min() >= 254
    assert abs(pixels.mean() - 127.5) < 1
    assert np.all(np.diff(pixels[0, :, 0]) >= 0)
    assert reference.notes == ("photo.png is 16-bit: scaled to 8-bit",)


def rgba_half_transparent() -> Image.Image:
    image = Image.new("RGBA", (400, 300), (255, 0, 0, 255))
    image.paste((0, 0, 255, 0), (200, 0, 400, 300))
    return image


def la_half_transparent() -> Image.Image:
    image = Image.new("LA", (400, 300), (0, 255))
    image.paste((255, 0), (200, 0, 400, 300))
    return image


def palette_half_transparent() -> Image.Image:
    image = Image.new("P", (400, 300), 1)
    image.putpalette([0, 0, 255, 0, 0, 0] + [0] * 762)
    image.paste(0, (200, 0, 400, 300))
    image.info["transparency"] = 0
    return image


@pytest.mark.parametrize(
    ("make", "opaque_colour"),
    [(rgba_half_transparent, (255, 0, 0)), (la_half_transparent, (0, 0, 0)), (palette_half_transparent, (0, 0, 0))],
    ids=["RGBA", "LA", "P"],
)
def test_transparency_is_composited_on_grey(make, opaque_colour):
    reference = normalise_reference(encode(make(), "PNG"), "photo.png")
    pixels = decoded(reference)
    assert tuple(pixels[150, 100]) == opaque_colour
    assert tuple(pixels[150, 300]) == GREY
    assert reference.notes == ("photo.png has transparency: composited on grey",)


def test_opaque_alpha_is_dropped_without_a_note():
    reference = normalise_reference(encode(Image.new("RGBA", (300, 300), (10, 20, 30, 255)), "PNG"), "photo.png")
    assert tuple(decoded(reference)[5, 5]) == (10, 20, 30)
    assert reference.notes == ()


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (300, 300), colour) for colour in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    reference = normalise_reference(data, "photo.gif")
    assert tuple(decoded(reference)[150, 150]) == (255, 0, 0)
    assert reference.notes == ("photo.gif is animated (3 frames): its first frame is used",)


def test_multipage_tiff_gives_its_first_page():
    pages = [Image.new("RGB", (300, 300), colour) for colour in [(0, 255, 0), (255, 0, 0)]]
    reference = normalise_reference(encode(pages[0], "TIFF", save_all=True, append_images=pages[1:]), "scan.tif")
    assert tuple(decoded(reference)[150, 150]) == (0, 255, 0)
    assert reference.notes == ("scan.tif has 2 pages: its first page is used",)


def test_cmyk_without_profile_becomes_rgb():
    reference = normalise_reference(encode(Image.new("CMYK", (300, 300), (0, 255, 255, 0)), "TIFF"), "print.tif")
    assert tuple(decoded(reference)[5, 5]) == (255, 0, 0)
    assert reference.notes == ("print.tif is CMYK without a colour profile: its colours are converted approximately",)


def swapped_primaries_profile() -> bytes:
    """sRGB with its red and green primaries swapped: a source red is sRGB green."""
    profile = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    profile[84:100] = bytes(16)  # the profile ID no longer matches once tags move
    (count,) = struct.unpack(">I", profile[128:132])
    entries = {bytes(profile[132 + 12 * i : 136 + 12 * i]): 132 + 12 * i for i in range(count)}
    red, green = entries[b"rXYZ"], entries[b"gXYZ"]
    profile[red + 4 : red + 12], profile[green + 4 : green + 12] = (
        profile[green + 4 : green + 12],
        profile[red + 4 : red + 12],
    )
    return bytes(profile)


def test_embedded_colour_profile_is_converted_to_srgb():
    data = encode(Image.new("RGB", (300, 300), (255, 0, 0)), "PNG", icc_profile=swapped_primaries_profile())
    reference = normalise_reference(data, "photo.png")
    red, green, blue = decoded(reference)[5, 5]
    assert green > 200 and red < 60 and blue < 60
    assert reference.notes == ()


def test_unusable_colour_profile_leaves_colours_as_they_are():
    data = encode(Image.new("RGB", (300, 300), (255, 0, 0)), "PNG", icc_profile=b"not a profile")
    reference = normalise_reference(data, "photo.png")
    assert tuple(decoded(reference)[5, 5]) == (255, 0, 0)
    assert reference.notes == (
        "photo.png has a colour profile Likeness cannot apply: its colours are used as they are",
    )


def test_float_samples_are_refused():
    data = encode(Image.fromarray(np.ones((300, 300), dtype=np.float32)), "TIFF")
    with pytest.raises(InvalidInput, match="depth.tif has 32-bit float samples: save the photo as an 8- or 16-bit"):
        normalise_reference(data, "depth.tif")


def test_same_bytes_give_the_same_png_without_metadata():
    exif = Image.Exif()
    exif[0x0112] = 6
    source = rgba_half_transparent()
    data = encode(
        source,
        "PNG",
        icc_profile=ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes(),
        exif=exif.tobytes(),
        dpi=(300, 300),
    )
    first, second = normalise_reference(data, "photo.png"), normalise_reference(data, "photo.png")
    assert first == second
    assert set(png_chunk_types(first.png)) == {b"IHDR", b"IDAT", b"IEND"}


# --- sizes that are refused before decoding ---------------------------------------------------------------------


def test_huge_png_is_refused_from_its_header(huge_png, monkeypatch):
    def no_decoding(self):
        raise AssertionError("the pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(InvalidInput) as refused:
        read_reference_image(huge_png)
    assert str(refused.value) == (
        f"{huge_png} is 12000x12000 px, more than the 8192 px Likeness accepts on the long side: "
        "downscale the photo and try again"
    )


def test_huge_png_is_refused_in_little_memory(huge_png):
    script = (
        "import resource, sys\n"
        "from pathlib import Path\n"
        "from likeness.inputs import InvalidInput, read_reference_image\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        "    read_reference_image(Path(sys.argv[1]))\n"
        "except InvalidInput:\n"
        "    print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(huge_png)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout, result.stderr
    before_kib, after_kib = map(int, result.stdout.split())
    assert after_kib - before_kib < 50_000, "decoding 12000x12000 px would take about 576 MB"


def test_too_many_megapixels_are_refused_from_the_header():
    data = encode(Image.new("L", (8000, 7000)), "PNG")
    with pytest.raises(
        InvalidInput, match=r"photo.png is 8000x7000 px \(56.0 megapixels\), more than the 52 megapixels"
    ):
        normalise_reference(data, "photo.png")


@pytest.mark.parametrize("limit", [100_000, 200_000], ids=["bomb-error", "bomb-warning"])
def test_decompression_bomb_is_a_clear_refusal(limit, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    data = encode(Image.new("RGB", (512, 512), "tan"), "PNG")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(InvalidInput) as refused:
            normalise_reference(data, "photo.png")
    assert str(refused.value) == (
        f"photo.png has 262144 pixels, above Pillow's decompression-bomb limit of {limit} pixels: "
        "downscale the photo and try again"
    )
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


def test_oversized_file_is_refused_before_reading(tmp_path, monkeypatch):
    monkeypatch.setattr(inputs, "MAX_REFERENCE_FILE_BYTES", 2**20)
    path = tmp_path / "big.bmp"
    path.write_bytes(bytes(3 * 2**20))
    with pytest.raises(InvalidInput, match="big.bmp is 3 MiB, more than the 1 MiB Likeness reads"):
        read_reference_image(path)
