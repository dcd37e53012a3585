"""Render prompts: seeded templates, video prompts, prompt files, and an LLM on a real local HTTP server."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from likeness.inputs import InvalidInput
from likeness.render.llm import (
    LlmSettings,
    LlmUnusable,
    chat_variations,
    make_video_prompt,
    prompt_variations,
)
from likeness.render.prompt_files import PromptEntry, PromptsFileProblem, read_prompts_file
from likeness.render.prompts import (
    CAMERA_MOVES,
    MOTIONS,
    SITUATIONS,
    CharacterPrompt,
    PromptTemplateProblem,
    UnknownPlaceholder,
    check_template,
    template_variations,
    video_prompt,
)

ADA = CharacterPrompt(trigger="Ada_Lovelace", description="a woman with dark curly hair", lora_triggers=("kodak",))
SECRET = "sk-test-0123456789-secret"


# Templates ---------------------------------------------------------------------------------------------------------


def test_template_variations_are_the_same_for_a_seed_and_distinct() -> None:
    first = template_variations(ADA, 40, seed=7)
    assert first == template_variations(ADA, 40, seed=7)
    assert first != template_variations(ADA, 40, seed=8)
    assert len(set(first)) == 40
    assert all(p.startswith("Ada_Lovelace, a woman with dark curly hair, ") and p.endswith(", kodak") for p in first)
    # A list no longer than the situations shows each situation once.
    short = template_variations(ADA, len(SITUATIONS), seed=3)
    assert sorted(next(s for s in SITUATIONS if s in p) for p in short) == sorted(SITUATIONS)
    assert len(set(template_variations(ADA, 1000, seed=1))) == 1000
    assert template_variations(ADA, 0, seed=1) == []


def test_compose_puts_the_trigger_first_and_leaves_no_empty_parts() -> None:
    bare = CharacterPrompt(trigger="ada", style="")
    assert bare.compose(situation="a candid photo in a sunlit cafe", lens="35mm") == (
        "ada, a candid photo in a sunlit cafe, 35mm"
    )
    template = "{trigger} in {situation}, {{literal}} {lens}"
    assert template_variations(bare, 2, seed=1, template=template)[0].startswith("ada in ")
    assert all("{literal}" in p for p in template_variations(bare, 2, seed=1, template=template))


def test_a_template_with_an_unknown_placeholder_is_refused_naming_it_and_the_known_ones() -> None:
    with pytest.raises(UnknownPlaceholder) as caught:
        template_variations(ADA, 3, seed=1, template="{trigger} at {situaton}, {lens}")
    message = str(caught.value)
    assert isinstance(caught.value, InvalidInput)
    assert "unknown placeholder {situaton} (did you mean {situation}?)" in message
    assert "{framing}, {lens}, {lighting}, {lora_triggers}, {situation}, {style}, {trigger}" in message
    with pytest.raises(UnknownPlaceholder, match=r"unknown placeholder \{0\}"):
        check_template("{trigger} {0}")
    with pytest.raises(PromptTemplateProblem, match=r"has no \{trigger\}"):
        check_template("a photo in {situation}")
    with pytest.raises(PromptTemplateProblem, match=r"write \{trigger\}, not \{trigger!r\}"):
        check_template("{trigger!r}")
    with pytest.raises(PromptTemplateProblem, match=r"write \{\{ and \}\} for literal braces"):
        check_template("{trigger} {situation")


def test_video_prompt_adds_a_camera_move_and_motion_the_same_for_a_seed() -> None:
    image = template_variations(ADA, 1, seed=2)[0]
    clip = video_prompt(image + ".", seed=5)
    assert clip == video_prompt(image, seed=5)
    assert clip.startswith(image + ", ")
    added = clip.removeprefix(image + ", ")
    assert any(added.startswith(move) for move in CAMERA_MOVES) and any(motion in added for motion in MOTIONS)
    assert len({video_prompt(image, seed) for seed in range(10)}) > 1
    with pytest.raises(InvalidInput, match="empty prompt"):
        video_prompt("  ", seed=1)


# Prompt files ------------------------------------------------------------------------------------------------------


def test_a_text_file_gives_one_prompt_a_line(tmp_path: Path) -> None:
    path = tmp_path / "prompts.txt"
    path.write_text("# my prompts\n\nada in a cafe, 35mm\r\n  ada on a beach  \n# done\n", encoding="utf-8")
    assert read_prompts_file(path) == [PromptEntry(prompt="ada in a cafe, 35mm"), PromptEntry(prompt="ada on a beach")]


def test_a_yaml_file_gives_prompts_with_their_options(tmp_path: Path) -> None:
    path = tmp_path / "prompts.yaml"
    path.write_text(
        "- ada in a cafe\n"
        "- prompt: ada turns and smiles\n"
        "  kind: video\n"
        "  seed: 3\n"
        "  frames: 81\n"
        "  lora_scale: 0.8\n"
        "  negative_prompt: blurry\n"
        "  fx: film\n",
        encoding="utf-8",
    )
    assert read_prompts_file(path) == [
        PromptEntry(prompt="ada in a cafe"),
        PromptEntry(
            prompt="ada turns and smiles",
            kind="video",
            seed=3,
            frames=81,
            lora_scale=0.8,
            negative_prompt="blurry",
            fx="film",
        ),
    ]


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("empty.txt", b"", "is empty"),
        ("blank.yaml", b"  \n\n", "is empty"),
        ("comments.txt", b"# nothing yet\n\n", "holds no prompts, only blank lines and # comments"),
        ("comments.yaml", b"# nothing yet\n", "holds no prompts"),
        ("image.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "is not text: it holds NUL bytes"),
        ("latin1.txt", "café au lait\n".encode("latin-1"), "is not text: byte 0xe9 at offset 3 is not UTF-8"),
        ("escape.txt", b"ada in a cafe\nada \x1b[31m red\n", "line 2: control character U+001B"),
        ("mapping.yaml", b"prompt: ada in a cafe\n", "must be a list of prompts"),
        (
            "text.yaml",
            b"ada in a cafe\n",
            "must be a list of prompts (text, or mappings with a prompt and options), not text",
        ),
        ("broken.yaml", b"- [ada\n", "not valid YAML (line 2, column 1:"),
        (
            "unknown.yaml",
            b"- ada in a cafe\n- prompt: ada on a beach\n  seeed: 3\n  colour: red\n",
            "entry 2 (line 2): unknown options 'seeed', 'colour'; known: prompt, kind, seed, frames,",
        ),
        (
            "badseed.yml",
            b"- prompt: ada\n  seed: -1\n",
            "entry 1 (line 1): seed=-1: Input should be greater than or equal to 0",
        ),
        (
            "nokind.yaml",
            b"- prompt: ada\n  kind: gif\n",
            "entry 1 (line 1): kind='gif': Input should be 'image' or 'video'",
        ),
        ("noprompt.yaml", b"- seed: 3\n", "entry 1 (line 1): no prompt"),
        ("emptyprompt.yaml", b"- ''\n", "entry 1 (line 1): prompt is empty"),
        (
            "number.yaml",
            b"- ada\n- 42\n",
            "entry 2 (line 2): a prompt is text or a mapping with a prompt and options, not a number",
        ),
        ("frames.yaml", b"- prompt: ada\n  kind: image\n  frames: 41\n", "frames is an option of video prompts"),
        ("prompts.json", b'["ada"]', "unknown kind of file '.json': use .txt"),
    ],
)
def test_a_bad_prompts_file_is_refused_naming_the_file_and_the_problem(
    tmp_path: Path, name: str, content: bytes, problem: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(PromptsFileProblem) as caught:
        read_prompts_file(path)
    assert isinstance(caught.value, InvalidInput)
    assert str(caught.value).startswith(f"prompts file {path}: ")
    assert problem in str(caught.value)


def test_a_missing_prompts_file_or_a_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PromptsFileProblem, match="prompts.txt: no such file"):
        read_prompts_file(tmp_path / "prompts.txt")
    (tmp_path / "folder.txt").mkdir()
    with pytest.raises(PromptsFileProblem, match="is a folder, not a file"):
        read_prompts_file(tmp_path / "folder.txt")


# The LLM -----------------------------------------------------------------------------------------------------------

Answer = Callable[[dict[str, Any]], tuple[int, str]]


def completion(content: object, finish_reason: str = "stop") -> str:
    """An OpenAI chat completion whose first choice says `content`."""
    message = {"role": "assistant", "content": content}
    return json.dumps(
        {"object": "chat.completion", "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}]}
    )


class FakeLlm:
    """OpenAI-compatible chat servers on 127.0.0.1 that answer as told, recording the requests they get."""

    def __init__(self) -> None:
        self.servers: list[ThreadingHTTPServer] = []
        self.requests: list[dict[str, Any]] = []
        self.release = threading.Event()

    def start(self, answer: Answer | None = None, trickle: bool = False) -> str:
        """A server's base URL: it answers with `answer`, or never (None), or one byte at a time (`trickle`)."""
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                if trickle:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    for _ in range(100):
                        if fake.release.wait(0.2):
                            return
                        self.wfile.write(b" ")
                        self.wfile.flush()
                    return
                if answer is None:
                    fake.release.wait(30)
                    return
                status, text = answer(body)
                data = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.servers.append(server)
        return f"http://127.0.0.1:{server.server_port}/v1"

    def close(self) -> None:
        self.release.set()
        for server in self.servers:
            server.shutdown()
            server.server_close()


@pytest.fixture
def fake_llm() -> Iterator[FakeLlm]:
    fake = FakeLlm()
    yield fake
    fake.close()


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every log record, httpx's debug ones too; the key must be in none of them."""
    caplog.set_level(logging.DEBUG)
    yield caplog
    assert SECRET not in caplog.text


def settings(url: str, timeout_s: float = 5.0, key: str | None = SECRET) -> LlmSettings:
    return LlmSettings(url=url, model="tiny-prompter", api_key=SecretStr(key) if key else None, timeout_s=timeout_s)


def test_the_llm_writes_the_prompts_asked_for(fake_llm: FakeLlm, logs: pytest.LogCaptureFixture) -> None:
    written = [
        "Ada_Lovelace, a woman with dark curly hair, reading in a library, medium shot, soft window light, 50mm, kodak",
        "a woman with dark curly hair on a ferry at dawn, close-up, golden light, 85mm",
        "Ada_Lovelace, walking through a flower market, full body shot, overcast daylight, 35mm, kodak",
    ]
    url = fake_llm.start(lambda body: (200, completion("```json\n" + json.dumps(written) + "\n```")))
    prompts, source = prompt_variations(ADA, 3, seed=4, llm=settings(url))
    assert source == "llm"
    # The one without the trigger word gets it first, and the LoRA's word it lacked at the end.
    assert prompts == [written[0], "Ada_Lovelace, " + written[1] + ", kodak", written[2]]
    (request,) = fake_llm.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == f"Bearer {SECRET}"
    assert request["body"]["model"] == "tiny-prompter"
    assert request["body"]["seed"] == 4
    roles = [message["role"] for message in request["body"]["messages"]]
    assert roles == ["system", "user"]
    assert "exactly 3 strings" in request["body"]["messages"][0]["content"]
    assert "Ada_Lovelace" in request["body"]["messages"][1]["content"]


def test_no_key_sends_no_authorization(fake_llm: FakeLlm) -> None:
    url = fake_llm.start(lambda body: (200, completion(json.dumps(["ada_x, in a cafe, 35mm, soft light"]))))
    assert chat_variations(CharacterPrompt(trigger="ada_x"), 1, seed=1, llm=settings(url, key=None)) == [
        "ada_x, in a cafe, 35mm, soft light"
    ]
    assert "Authorization" not in fake_llm.requests[0]["headers"]


@pytest.mark.parametrize("trickle", [False, True], ids=["silent", "trickling"])
def test_a_hanging_llm_falls_back_to_the_templates_within_the_timeout(
    fake_llm: FakeLlm, logs: pytest.LogCaptureFixture, trickle: bool
) -> None:
    url = fake_llm.start(None, trickle=trickle)
    started = time.monotonic()
    prompts, source = prompt_variations(ADA, 3, seed=4, llm=settings(url, timeout_s=1.0))
    # A liveness check, not a benchmark: the flow goes on instead of waiting for the server.
    assert time.monotonic() - started < 1.0 + 2.0
    assert (prompts, source) == (template_variations(ADA, 3, seed=4), "templates")
    assert "within 1 s" in logs.text
    assert "seeded prompt templates" in logs.text


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (200, "<html><body>It works!</body></html>", "answered something that is not JSON: '<html><body>It works!"),
        (200, json.dumps({"choices": []}), "answered JSON without choices[0].message.content"),
        (200, completion("Sure! Here are some lovely prompts for you."), "the LLM's answer holds no JSON list"),
        (200, completion('{"prompts": "a cafe"}'), "the LLM's answer holds no JSON list"),
        (200, completion("[1, 2, 3]"), "item 1 of the LLM's list is int, not a prompt"),
        (
            200,
            completion('["Ada_Lovelace, in a cafe, 35mm"]'),
            "the LLM gave 1 different prompts where 3 were asked for",
        ),
        (200, completion('["ok", "", "x"]'), "item 1 of the LLM's list describes nothing"),
        (200, completion("[]"), "gave 0 different prompts"),
        (200, completion(["a list of parts"]), "answered no text in choices[0].message.content"),
        (200, completion('["Ada_Lovelace, in a caf', "length"), "stopped at max_tokens"),
        (
            500,
            "Internal error: out of memory",
            "answered HTTP 500 Internal Server Error: 'Internal error: out of memory'",
        ),
    ],
    ids=[
        "html",
        "no-choices",
        "prose",
        "object",
        "numbers",
        "too-few",
        "empty-items",
        "empty-list",
        "parts",
        "cut",
        "500",
    ],
)
def test_an_llm_answering_garbage_falls_back_with_the_reason(
    fake_llm: FakeLlm, logs: pytest.LogCaptureFixture, status: int, body: str, reason: str
) -> None:
    url = fake_llm.start(lambda request: (status, body))
    with pytest.raises(LlmUnusable) as caught:
        chat_variations(ADA, 3, seed=4, llm=settings(url))
    assert reason in str(caught.value)
    prompts, source = prompt_variations(ADA, 3, seed=4, llm=settings(url))
    assert (prompts, source) == (template_variations(ADA, 3, seed=4), "templates")
    assert reason in logs.text


def test_a_down_llm_falls_back(logs: pytest.LogCaptureFixture) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens there now: the connection is refused at once.
    url = f"http://127.0.0.1:{port}/v1"
    with pytest.raises(LlmUnusable, match=rf"LLM 'tiny-prompter' at {url}/chat/completions: cannot connect"):
        chat_variations(ADA, 2, seed=1, llm=settings(url))
    assert prompt_variations(ADA, 2, seed=1, llm=settings(url))[1] == "templates"
    assert "cannot connect" in logs.text


def test_the_key_is_in_no_error_even_when_the_server_echoes_it(
    fake_llm: FakeLlm, logs: pytest.LogCaptureFixture
) -> None:
    url = fake_llm.start(lambda body: (401, json.dumps({"error": f"invalid key {SECRET}"})))
    with pytest.raises(LlmUnusable) as caught:
        chat_variations(ADA, 2, seed=1, llm=settings(url))
    assert "answered HTTP 401 Unauthorized" in str(caught.value) and "invalid key ***" in str(caught.value)
    assert SECRET not in str(caught.value)
    assert prompt_variations(ADA, 2, seed=1, llm=settings(url))[1] == "templates"
    with pytest.raises(ValidationError):
        LlmSettings(url="file:///etc/passwd", model="m")


def test_the_llm_writes_a_video_prompt_or_the_template_does(fake_llm: FakeLlm, logs: pytest.LogCaptureFixture) -> None:
    image = template_variations(ADA, 1, seed=2)[0]
    good = fake_llm.start(
        lambda body: (200, completion('"slow dolly-in as she turns her head and smiles, hair moving"'))
    )
    clip, source = make_video_prompt(image, seed=3, llm=settings(good))
    # The answer lost the trigger word: it is put back first.
    assert (clip, source) == ("Ada_Lovelace, slow dolly-in as she turns her head and smiles, hair moving", "llm")
    assert image in fake_llm.requests[0]["body"]["messages"][1]["content"]
    garbage = fake_llm.start(lambda body: (200, completion("<html>nope</html>")))
    assert make_video_prompt(image, seed=3, llm=settings(garbage)) == (video_prompt(image, seed=3), "templates")
    assert "markup or JSON, not a prompt" in logs.text
    assert make_video_prompt(image, seed=3, llm=None) == (video_prompt(image, seed=3), "templates")


def test_an_answer_of_random_tokens_is_refused() -> None:
    from likeness.render.llm import parse_video_prompt

    with pytest.raises(LlmUnusable, match="control characters or broken text"):
        parse_video_prompt("Ada, red\x12 apple \ufffd street walks slowly", "Ada, on a street")
    assert (
        parse_video_prompt("Ada walks slowly down the street\n", "Ada, on a street")
        == "Ada walks slowly down the street"
    )
