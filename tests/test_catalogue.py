"""The variation catalogue as data: the default, extra files on top, refusals, shots and their sizes."""

import re
import textwrap
from pathlib import Path

import pytest

from likeness.dataset.catalogue import (
    DEFAULT_CATALOGUE,
    Catalogue,
    InvalidCatalogue,
    load_catalogue,
    shot_size,
)
from likeness.inputs import InvalidInput

GROUPS = {"turnaround", "pose", "emotion", "closeup", "try-on", "pose-transfer", "background", "lighting"}
FILE_NAME_SAFE = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")


@pytest.fixture(scope="module")
def default() -> Catalogue:
    return load_catalogue()


def write(tmp_path: Path, text: str, name: str = "mine.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def entry(id: str, **keys: object) -> str:
    """One YAML list item for an entry with the required keys, plus `keys` as flow YAML."""
    fields = {"id": id, "group": "pose", "prompt": "Show the person from the front.", "view": "front view"}
    fields |= {"framing": "full body", **keys}
    return "  - {" + ", ".join(f"{key}: {value}" for key, value in fields.items()) + "}\n"


def refusal(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(InvalidCatalogue) as caught:
        load_catalogue(path)
    assert isinstance(caught.value, InvalidInput)
    return str(caught.value)


# The default -----------------------------------------------------------------------------------------------------


def test_default_covers_every_group_with_24_to_40_shots(default):
    shots = default.shots()
    assert len(shots) == 32
    assert 24 <= len(shots) <= 40
    assert {entry.group for entry in default.entries} == GROUPS
    # Try-on and pose transfer make nothing without their second image.
    assert {shot.group for shot in shots} == GROUPS - {"try-on", "pose-transfer"}
    assert default.sources == (str(DEFAULT_CATALOGUE),)
    assert {"front", "three-quarter", "side", "back", "walking", "sitting", "lying-down"} <= set(default.ids())
    assert {"face", "upper-body"} <= set(default.ids())


def test_default_with_one_garment_and_one_pose_adds_one_shot_each(default):
    shots = default.shots(garments=1, poses=1)
    assert len(shots) == 34
    extra = [shot for shot in shots if shot.needs]
    assert [(s.id, s.needs, s.input_index) for s in extra] == [
        ("try-on-1", "garment", 0),
        ("pose-transfer-1", "pose", 0),
    ]
    assert all("image 1" in s.prompt and "image 2" in s.prompt for s in extra)


def test_default_prompts_keep_identity_and_a_plain_background_unless_they_change_it(default):
    for shot in default.shots(garments=1, poses=1):
        assert "same face" in shot.prompt, shot.id
        assert "{" not in shot.prompt and "}" not in shot.prompt, shot.id
        plain = "Plain light grey studio background." in shot.prompt
        assert plain == (shot.group != "background"), shot.id


def test_default_aspects_and_face_expectations_suit_the_framing(default):
    shots = {shot.id: shot for shot in default.shots()}
    assert shots["turnaround"].aspect == "landscape" and shots["turnaround"].face == "any"
    assert shots["front"].aspect == "portrait"
    assert shots["back"].face == "hidden"
    assert "neutral expression" not in shots["back"].tags
    closeups = [shot for shot in shots.values() if shot.group == "closeup"]
    assert closeups and all(shot.aspect == "square" and shot.closeup for shot in closeups)


def test_shot_ids_are_unique_and_file_name_safe(default):
    ids = [shot.id for shot in default.shots(garments=3, poses=2)]
    assert len(ids) == len(set(ids)) == 32 + 5
    assert all(FILE_NAME_SAFE.fullmatch(shot_id) for shot_id in ids)
    assert {"try-on-1", "try-on-2", "try-on-3", "pose-transfer-2", "smile-30", "smile-100"} <= set(ids)


def test_intensity_changes_the_words_in_prompt_and_tags_and_is_recorded(default):
    smiles = {shot.id: shot for shot in default.shots(only=["smile"])}
    assert list(smiles) == ["smile-30", "smile-60", "smile-100"]
    slight, broad = smiles["smile-30"], smiles["smile-100"]
    assert (slight.intensity, broad.intensity) == (0.3, 1.0)
    assert "slight smile" in slight.prompt and "slight smile" in slight.tags
    assert "broad smile" in broad.prompt and "broad smile showing teeth" in broad.tags
    assert "broad" not in slight.prompt and "slight" not in broad.prompt
    # Caption tags in order: view, expression words, framing, entry tags.
    assert slight.tags == ("front view", "slight smile", "head and shoulders")


def test_an_intensity_takes_the_first_level_that_reaches_it(default):
    smile = default.entry("smile")
    assert [smile.words(x) for x in (0.0, 0.4, 0.41, 0.75, 0.9, 1.0)] == [
        "slight smile",
        "slight smile",
        "warm smile",
        "warm smile",
        "broad smile showing teeth",
        "broad smile showing teeth",
    ]


# Selecting entries and expanding them ----------------------------------------------------------------------------


def test_only_keeps_catalogue_order_and_needs_entries_make_one_shot_per_image(default):
    assert [s.id for s in default.shots(only=["back", "front"])] == ["front", "back"]
    assert default.shots(only=["try-on"]) == []
    try_on = default.shots(only=["try-on"], garments=2, poses=5)
    assert [(s.id, s.input_index) for s in try_on] == [("try-on-1", 0), ("try-on-2", 1)]
    assert try_on[0].prompt == try_on[1].prompt


def test_only_with_unknown_ids_names_them_and_the_known_ones(default):
    with pytest.raises(InvalidCatalogue, match=r"unknown catalogue entries 'smirk', 'wave'; known: turnaround, front"):
        default.shots(only=["front", "smirk", "wave"])


def test_negative_input_counts_are_refused(default):
    with pytest.raises(ValueError, match="cannot be negative"):
        default.shots(garments=-1)


# Extra files on top of the default -------------------------------------------------------------------------------


def test_an_extra_file_replaces_entries_by_id_and_adds_new_ones(tmp_path, default):
    path = write(
        tmp_path,
        """\
        entries:
          - id: smile
            group: emotion
            prompt: "Give the person {expression}."
            view: front view
            framing: upper body
            levels: [{upto: 0.5, words: faint smile}, {upto: 1.0, words: grin}]
            intensities: [0.2]
          - id: wink
            group: emotion
            prompt: Make the person wink at the camera
            view: front view
            expression: winking
            framing: close-up of the face
            aspect: square
            keep: false
        """,
    )
    catalogue = load_catalogue(path)
    assert catalogue.sources == (str(DEFAULT_CATALOGUE), str(path))
    assert catalogue.ids() == default.ids() + ["wink"]
    shots = {shot.id: shot for shot in catalogue.shots()}
    assert "smile-30" not in shots
    # Without a `keep` of its own the file takes the default's sentence; `keep: false` leaves it off.
    assert shots["smile-20"].prompt.startswith("Give the person faint smile. Keep the same person with the same face")
    assert shots["wink"].prompt == "Make the person wink at the camera"
    assert shots["wink"].tags == ("front view", "winking", "close-up of the face")
    assert len(shots) == 32 - 3 + 1 + 1


def test_an_extra_files_own_keep_sentence_applies_to_its_entries_only(tmp_path):
    path = write(tmp_path, "keep: Same person, same face.\nentries:\n" + entry("wave", prompt="'Make the person wave'"))
    catalogue = load_catalogue(path)
    assert catalogue.entry("wave").prompt == "Make the person wave. Same person, same face."
    assert "Plain light grey studio background." in catalogue.entry("front").prompt


# Refusals: every problem on a line of its own, naming the file and the entry --------------------------------------


@pytest.mark.parametrize(
    ("keys", "problem"),
    [
        ({"colour": "red"}, "unknown key 'colour'"),
        ({"view": 3}, "view=3: Input should be a valid string"),
        ({"closeup": "[1]"}, "closeup: Input should be a valid boolean"),
        ({"aspect": "wide"}, "aspect='wide': Input should be 'portrait', 'square' or 'landscape'"),
        ({"group": "posture"}, "group='posture': Input should be 'turnaround', 'pose'"),
        ({"tags": "outdoors"}, "tags='outdoors': Input should be a list"),
        (
            {"levels": "[slight smile]", "intensities": "[0.5]"},
            "levels[0]='slight smile': Input should be a mapping like",
        ),
        ({"levels": "[{upto: 1.0, words: a}]"}, "levels without intensities make no shot"),
        ({"intensities": "[0.5]"}, "intensities need levels"),
        (
            {"levels": "[{upto: 1.0, words: a}]", "intensities": "[0.5, 1.5]"},
            "intensities[1]=1.5: Input should be less than or equal to 1",
        ),
        (
            {"levels": "[{upto: 0.5, words: a}, {upto: 0.8, words: b}]", "intensities": "[0.5]"},
            "levels must rise strictly and the last must reach 1.0; upto: [0.5, 0.8]",
        ),
        (
            {"levels": "[{upto: 1.0, words: a, colour: red}]", "intensities": "[0.5]"},
            "levels[0]: unknown key 'colour'",
        ),
        (
            {"levels": "[{upto: 1.0, words: a}]", "intensities": "[0.5, 0.501]"},
            "intensities repeat (in hundredths)",
        ),
        ({"prompt": "'Show {mood}.'"}, "prompt='Show {mood}.': unknown placeholder {mood}; known: {expression}"),
        ({"prompt": "'Show {expression!r}.'"}, "unknown placeholder {expression!r}"),
        ({"prompt": "'Show {.'"}, "expected '}' before end of string (write {{ and }} for literal braces)"),
        ({"prompt": "''"}, "prompt='': String should have at least 1 character"),
        ({"needs": "garment"}, "group 'pose' takes no second image, not needs: garment"),
        ({"group": "try-on"}, "group 'try-on' takes needs: garment, not needs: None"),
    ],
)
def test_a_bad_entry_is_refused_naming_file_entry_and_problem(tmp_path, keys, problem):
    message = refusal(tmp_path, "entries:\n" + entry("front") + entry("back") + entry("smile", **keys))
    assert message.startswith(f"catalogue {tmp_path / 'mine.yaml'}, entry 'smile' (#3): ")
    assert problem in message
    assert len(message.splitlines()) == 1


def test_the_issue_example_message_word_for_word(tmp_path):
    message = refusal(tmp_path, "entries:\n" + entry("front") + entry("back") + entry("smile", colour="red"))
    assert message == f"catalogue {tmp_path / 'mine.yaml'}, entry 'smile' (#3): unknown key 'colour'"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("entries: [\n", ": not valid YAML (line 2, column 1: expected the node content"),
        ("- front\n- back\n", ": must be a mapping with an 'entries' list, not a list"),
        ("", ": must be a mapping with an 'entries' list, not nothing"),
        ("entries: []\n", ": no entries: 'entries' must be a non-empty list, not a list"),
        ("keep: Same face.\n", ": no entries: 'entries' must be a non-empty list, not nothing"),
        ("entry: []\n" + "entries:\n" + entry("a"), ": unknown top-level key 'entry'; known: keep, entries"),
        ("keep: [a]\nentries:\n" + entry("a"), ": keep must be a sentence (text), not a list"),
        ("keep: 'Same {face}.'\nentries:\n" + entry("a"), ": keep: unknown placeholder {face}"),
        ("entries:\n  - front\n", ", entry #1: must be a mapping of keys to values, not a str"),
        ("entries:\n" + entry("a") + entry("Big Smile"), ", entry 'Big Smile' (#2): id='Big Smile': not a slug"),
        ("entries:\n" + entry("a") + entry("-a"), ", entry '-a' (#2): id='-a': not a slug"),
        ("entries:\n" + entry("a") + entry("7"), ", entry #2: id=7: Input should be a valid string"),
        ("entries:\n" + entry("a") + entry("b") + entry("a"), ", entry 'a' (#3): duplicate id, first used by entry #1"),
        ("entries:\n  - {id: a, group: pose, prompt: x, framing: y}\n", ", entry 'a' (#1): missing key 'view'"),
        (
            "entries:\n  - id: a\n    id: b\n    group: pose\n",
            ": not valid YAML (line 3, column 5: key 'id' written twice)",
        ),
    ],
)
def test_a_bad_file_is_refused_naming_the_file_and_the_entry(tmp_path, text, problem):
    message = refusal(tmp_path, text)
    assert message.startswith(f"catalogue {tmp_path / 'mine.yaml'}")
    assert problem in message, message


def test_every_problem_of_a_file_is_reported_on_its_own_line(tmp_path):
    text = "colour: red\nentries:\n" + entry("a", colour="red") + entry("B") + entry("c", view=3, aspect="wide")
    lines = refusal(tmp_path, text).splitlines()
    assert [line.split(": ", 1)[0].removeprefix(f"catalogue {tmp_path / 'mine.yaml'}") for line in lines] == [
        "",
        ", entry 'a' (#1)",
        ", entry 'B' (#2)",
        ", entry 'c' (#3)",
        ", entry 'c' (#3)",
    ]


def test_a_shot_id_made_twice_across_files_names_both_entries(tmp_path):
    message = refusal(tmp_path, "entries:\n" + entry("smile-30") + entry("try-on-2"))
    mine, default = f"catalogue {tmp_path / 'mine.yaml'}", f"catalogue {DEFAULT_CATALOGUE}"
    assert message.splitlines() == [
        f"{mine}, entry 'smile-30' (#1): makes shot 'smile-30', as does {default}, entry 'smile' (#9)",
        f"{mine}, entry 'try-on-2' (#2): makes shot 'try-on-2', as does {default}, entry 'try-on' (#19)",
    ]


def test_a_missing_or_unreadable_file_is_refused(tmp_path):
    with pytest.raises(InvalidCatalogue, match=r"catalogue .*nope\.yaml: no such file"):
        load_catalogue(tmp_path / "nope.yaml")
    path = tmp_path / "latin1.yaml"
    path.write_bytes("entries: [caf\xe9]".encode("latin-1"))
    with pytest.raises(InvalidCatalogue, match=r"latin1\.yaml: cannot be read as UTF-8 text"):
        load_catalogue(path)


# Sizes -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("aspect", "long_side", "multiple", "size"),
    [
        ("portrait", 1024, 16, (768, 1024)),
        ("square", 1024, 16, (1024, 1024)),
        ("landscape", 1024, 16, (1024, 768)),
        ("portrait", 1000, 8, (752, 1000)),
        ("landscape", 512, 32, (512, 384)),
        ("portrait", 64, 16, (48, 64)),
        ("landscape", 16, 16, (16, 16)),
    ],
)
def test_shot_size_keeps_the_long_side_and_both_sides_multiples(aspect, long_side, multiple, size):
    width, height = shot_size(aspect, long_side, multiple)
    assert (width, height) == size
    assert width % multiple == 0 and height % multiple == 0 and max(width, height) == long_side


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (("wide", 1024, 16), "unknown aspect 'wide'; known: portrait, square, landscape"),
        (("square", 1000, 64), "long side 1000 is not a positive multiple of 64"),
        (("square", 0, 16), "long side 0 is not a positive multiple of 16"),
    ],
)
def test_shot_size_refuses_unknown_aspects_and_sides_that_are_not_multiples(args, problem):
    with pytest.raises(ValueError, match=re.escape(problem)):
        shot_size(*args)
