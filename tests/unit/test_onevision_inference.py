"""Several images and video at inference: chat (library and CLI), the web demo's handler and the
lmms-eval model answer as ``processor.prompt`` + ``model.generate`` do with the same inputs.

The tiny OneVision model of test_onevision.py (several images each read as one base view, video
frames pooled); a tiny LLaVA-1.5 model stands in for a model without video.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from PIL import Image
from test_onevision import _image, onevision_config

from helpers import make_video
from llava_lite.cli import chat as chat_cli
from llava_lite.config import LlavaConfig
from llava_lite.data import LlavaProcessor
from llava_lite.inference import ChatSession, DecodingSettings
from llava_lite.inference.web import WebChat
from llava_lite.modeling import LlavaModel
from llava_lite.modeling.llava import VISUAL_INPUTS

MAX_NEW_TOKENS = 6
SETTINGS = DecodingSettings(max_new_tokens=MAX_NEW_TOKENS)
QUESTION = "What is shown?"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """Three images of different sizes, a 12-frame clip, and the two models saved to folders."""
    root = tmp_path_factory.mktemp("ov_inference")
    paths = {}
    for name, (h, w, seed) in {"a": (60, 90, 1), "b": (96, 40, 2), "c": (50, 50, 3)}.items():
        paths[name] = root / f"{name}.png"
        _image(h, w, seed).save(paths[name])
    torch.manual_seed(0)  # the same random weights whatever ran before
    LlavaModel(onevision_config()).save_pretrained(root / "ov")
    torch.manual_seed(0)
    LlavaModel(LlavaConfig.from_name("tiny")).save_pretrained(root / "no_video")
    (root / "broken.mp4").write_bytes(b"not a video at all")
    return SimpleNamespace(
        root=root,
        clip=make_video(root / "clip.mp4", 12),
        ov=root / "ov",
        no_video=root / "no_video",
        **paths,
    )


@pytest.fixture(scope="module")
def loaded(files: SimpleNamespace) -> tuple[LlavaModel, LlavaProcessor]:
    model = LlavaModel.from_pretrained(files.ov).eval()
    assert model.video_token_id is not None
    return model, LlavaProcessor.from_model(model)


def _direct(
    model: LlavaModel, processor: LlavaProcessor, question: str, images: Any = None, video: Any = None
) -> str:
    """The greedy reply of one unbatched ``generate`` on ``processor.prompt``'s inputs."""
    prompt = processor.prompt(question, images, video=video)
    new_tokens = model.generate(
        prompt["input_ids"][None],  # [1, T]
        **{k: prompt.get(k) for k in VISUAL_INPUTS},
        max_new_tokens=MAX_NEW_TOKENS,
        eos_token_id=processor.stop_token_ids,
    )  # [1, T_new]
    return processor.tokenizer.decode(new_tokens[0], skip_special_tokens=True).strip()


def _slots(prompt: dict[str, Any], token_id: int | None) -> int:
    return int((prompt["input_ids"] == token_id).sum())


# --- ChatSession and llava-lite-chat ------------------------------------------------------------


def test_chat_about_two_images_equals_direct_generation(loaded, files) -> None:
    model, processor = loaded
    session = ChatSession(model, processor, image=[files.a, files.b], settings=SETTINGS)
    assert len(session.images) == 2 and session.image is None
    assert [p.tiled for p in session.images] == [False, False]  # OneVision: one base view each
    reply = session.ask(QUESTION)
    assert reply == _direct(model, processor, QUESTION, [str(files.a), str(files.b)])
    prompt = session.fitting_prompt("And now?")
    assert _slots(prompt, model.image_token_id) == 2 * (16 + 1)  # two base views, each + newline
    # The images in the order given: pixels equal the processor's for (a, b), not for (b, a).
    forward = processor.prompt(QUESTION, [str(files.a), str(files.b)])["pixel_values"]
    backward = processor.prompt(QUESTION, [str(files.b), str(files.a)])["pixel_values"]
    assert torch.equal(prompt["pixel_values"], forward) and not torch.equal(forward, backward)


def test_chat_about_a_video_equals_direct_generation(loaded, files) -> None:
    model, processor = loaded
    session = ChatSession(model, processor, video=files.clip, settings=SETTINGS)
    assert session.video is not None and session.video.frames == model.config.video.num_frames == 8
    assert session.ask(QUESTION) == _direct(model, processor, QUESTION, video=str(files.clip))
    prompt = session.fitting_prompt("Which way?")
    assert _slots(prompt, model.video_token_id) == processor.video_tokens(8) > 8
    assert _slots(prompt, model.image_token_id) == 0 and prompt["pixel_values"] is None
    # An image and the video together: both at the first question.
    both = ChatSession(model, processor, image=files.c, video=files.clip, settings=SETTINGS)
    expected = _direct(model, processor, QUESTION, str(files.c), video=str(files.clip))
    assert both.ask(QUESTION) == expected


def test_image_command_adds_an_image_and_starts_a_new_conversation(loaded, files) -> None:
    model, processor = loaded
    session = ChatSession(model, processor, image=files.a, settings=SETTINGS)
    assert session.image is not None and session.image.tiled  # one image: AnyRes tiles
    out = io.StringIO()
    script = (
        f"{QUESTION}\n/image {files.b}\n{QUESTION}\n/image {files.root / 'missing.png'}\n"
        f"/video {files.clip}\n{QUESTION}\n/image\n/exit\n"
    )
    assert chat_cli.interact(session, io.StringIO(script), out, prompt=True) == 3
    text = out.getvalue()
    assert "Chatting about 1 image; /image PATH adds an image" in text
    assert f"(image 2 added: {files.b}; new conversation about 2 images)\n" in text
    assert "(image not added: missing_image: " in text and "missing.png not found" in text
    assert f"(video: {files.clip}; new conversation about 2 images and a video)\n" in text
    assert "(usage: /image PATH)\n" in text
    replies = [part.split("\nUSER: ")[0].strip() for part in text.split("ASSISTANT: ")[1:]]
    pair = [str(files.a), str(files.b)]
    assert replies == [
        _direct(model, processor, QUESTION, str(files.a)),
        _direct(model, processor, QUESTION, pair),  # about both; the first turn is gone
        _direct(model, processor, QUESTION, pair, video=str(files.clip)),
    ]
    assert [q for q, _ in session.history] == [QUESTION]  # the video started a new conversation
    assert len(session.images) == 2  # the missing image left the session as it was
    chat_cli.run_command(session, "/clear", out)
    assert session.images == [] and session.video is None and session.history == []
    assert out.getvalue().endswith("(images and video dropped; new conversation)\n")


def test_cli_answers_about_two_images_and_a_video(files, capsys) -> None:
    argv = [str(files.ov), "--image", str(files.a), "--image", str(files.b), "--video", str(files.clip)]
    chat_cli.main([*argv, "--question", QUESTION, "--max-new-tokens", str(MAX_NEW_TOKENS)])
    model = LlavaModel.from_pretrained(files.ov).eval()
    expected = _direct(
        model, LlavaProcessor.from_model(model), QUESTION, [str(files.a), str(files.b)], str(files.clip)
    )
    assert capsys.readouterr().out.strip() == expected


def _cli_error(argv: list[str], capsys, monkeypatch) -> str:
    """Run llava-lite-chat expecting exit 1; its one error line."""
    monkeypatch.delenv("LLAVA_LITE_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        chat_cli.main([*argv, "--question", QUESTION, "--max-new-tokens", "2"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    [line] = [line for line in err.splitlines() if line.startswith("llava-lite-chat: error: ")]
    return line


def test_cli_video_on_a_model_without_video_is_one_error_line(files, capsys, monkeypatch) -> None:
    line = _cli_error([str(files.no_video), "--video", str(files.clip)], capsys, monkeypatch)
    assert line == (
        f"llava-lite-chat: error: video {files.clip}: "
        "this model reads no video (video_token is null in its config)"
    )


@pytest.mark.parametrize(
    ("option", "name", "message"),
    [
        ("--video", "missing.mp4", "missing_video: {path} not found"),
        ("--video", "broken.mp4", "unreadable_video: {path}"),
        ("--image", "missing.png", "missing_image: {path} not found"),
    ],
)
def test_cli_bad_video_or_image_names_the_file(files, capsys, monkeypatch, option, name, message) -> None:
    path = files.root / name
    line = _cli_error([str(files.ov), "--image", str(files.a), option, str(path)], capsys, monkeypatch)
    assert line.startswith("llava-lite-chat: error: " + message.format(path=path))


# --- the web demo's handler ---------------------------------------------------------------------


def _web_reply(chat: WebChat, *args: Any, **kwargs: Any) -> tuple[str, Any]:
    *_, (_, messages, state) = chat.respond(QUESTION, *args, **kwargs)
    return messages[-1]["content"], state


def test_web_handler_answers_about_two_images_and_a_video(loaded, files, monkeypatch) -> None:
    model, processor = loaded
    chat = WebChat(model, processor)
    pair = [str(files.a), str(files.b)]
    reply, state = _web_reply(chat, pair, None, None, 0.0, 1.0, MAX_NEW_TOKENS)
    assert reply == _direct(model, processor, QUESTION, pair)
    assert state.images == tuple(pair) and state.image is None and len(state.history) == 1
    # The image box plus the gallery's (path, caption) pairs: the same two images, same reply.
    gallery = [(str(files.b), None)]
    assert _web_reply(chat, str(files.a), None, None, 0.0, 1.0, MAX_NEW_TOKENS, gallery)[0] == reply

    clip = str(files.clip)
    expected = _direct(model, processor, QUESTION, video=clip)
    calls = []
    prepare_video = processor.prepare_video
    monkeypatch.setattr(processor, "prepare_video", lambda *a: calls.append(a) or prepare_video(*a))
    reply, state = _web_reply(chat, None, None, None, 0.0, 1.0, MAX_NEW_TOKENS, video=clip)
    assert reply == expected
    assert state.video == clip and state.images == ()
    messages = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": reply}]
    *_, (_, messages, state) = chat.respond(
        "And then?", None, messages, state, 0.0, 1.0, MAX_NEW_TOKENS, video=clip
    )
    assert len(messages) == 4 and [q for q, _ in state.history] == [QUESTION, "And then?"]
    decoded = [args for args in calls if isinstance(args[0], str)]  # not PreparedVideo pass-throughs
    assert len(decoded) == 1  # decoded once for the conversation, not every turn
    # A different image than the conversation is about starts a new one.
    *_, (_, messages, state) = chat.respond("Hi", str(files.c), messages, state, 0.0, 1.0, 2, video=clip)
    assert len(messages) == 2 and state.images == (str(files.c),) and len(state.history) == 1


def test_web_handler_refuses_a_video_on_a_model_without_video(files) -> None:
    gradio = pytest.importorskip("gradio", reason="the web demo is the optional extra llava_lite[web]")
    model = LlavaModel.from_pretrained(files.no_video).eval()
    chat = WebChat(model, LlavaProcessor.from_model(model))
    with pytest.raises(gradio.Error, match=r"video .*clip\.mp4: this model reads no video"):
        list(chat.respond(QUESTION, None, None, None, 0.0, 1.0, 2, video=str(files.clip)))


# --- the lmms-eval model ------------------------------------------------------------------------


def _lmms(folder: Path) -> Any:
    pytest.importorskip("lmms_eval", reason="lmms-eval is the optional extra llava_lite[lmms]")
    from llava_lite.evaluation.lmms_model import LlavaLite

    return LlavaLite(pretrained=str(folder), device="cpu")


def _request(kind: str, arguments: tuple) -> Any:
    from lmms_eval.api.instance import Instance

    return Instance(
        request_type=kind, arguments=arguments, idx=0, metadata={"task": "t", "doc_id": 0, "repeats": 1}
    )


def _visual(doc: dict) -> list:
    return doc["visuals"]


def test_lmms_model_answers_multi_image_and_video_docs(files) -> None:
    lm = _lmms(files.ov)
    a, b = (Image.open(path).convert("RGB") for path in (files.a, files.b))
    interleaved = "Is <image> brighter than <image>?"
    lm.task_dict = {"t": {"test": [{"visuals": [a, b]}, {"visuals": [str(files.clip)]}, {"visuals": [a, b]}]}}
    gen = {"max_new_tokens": MAX_NEW_TOKENS}
    answers = lm.generate_until(
        [
            _request("generate_until", (QUESTION, gen, _visual, 0, "t", "test")),
            _request("generate_until", (QUESTION, gen, _visual, 1, "t", "test")),
            _request("generate_until", (interleaved, gen, _visual, 2, "t", "test")),
        ]
    )
    model, processor = lm.model, lm.processor
    assert answers == [
        _direct(model, processor, QUESTION, [a, b]),
        _direct(model, processor, QUESTION, video=str(files.clip)),
        _direct(model, processor, interleaved, [a, b]),  # the task's markers place the images
    ]
    ids = processor.prompt(lm._question(interleaved, 2), [a, b])["input_ids"].tolist()
    first = ids.index(model.image_token_id)
    assert model.image_token_id not in ids[first + 17 : first + 20]  # words between the two images


def test_lmms_loglikelihood_reads_every_image_and_the_video(files) -> None:
    lm = _lmms(files.ov)
    a, b, c = (Image.open(path).convert("RGB") for path in (files.a, files.b, files.c))
    docs = [{"visuals": [a, b]}, {"visuals": [a, c]}, {"visuals": [str(files.clip)]}, {"visuals": []}]
    lm.task_dict = {"t": {"test": docs}}
    results = lm.loglikelihood(
        [_request("loglikelihood", (QUESTION, "a cat", _visual, i, "t", "test")) for i in range(len(docs))]
    )
    scores = [score for score, _ in results]
    assert all(math.isfinite(s) and s < 0 for s in scores)
    assert scores[0] != scores[1]  # the second image changed, so did the score
    assert scores[2] != scores[3]  # the video is read
    # The multi-image score is the plain forward's on processor.prompt's inputs.
    prompt = lm.processor.prompt(QUESTION, [a, b])
    target = lm.processor.tokenizer("a cat", add_special_tokens=False)["input_ids"]
    ids = torch.cat([prompt["input_ids"], torch.tensor(target)])[None]  # [1, T]
    with torch.no_grad():
        logits = lm.model(ids, **{k: prompt.get(k) for k in VISUAL_INPUTS}).logits  # [1, T, V]
    steps = logits[0, -len(target) - 1 : -1].log_softmax(-1)  # [T_cont, V]
    expected = steps.gather(-1, torch.tensor(target)[:, None]).sum().item()
    assert scores[0] == pytest.approx(expected, rel=1e-5)


def test_lmms_model_refuses_video_without_a_video_token_and_unknown_visuals(files) -> None:
    lm = _lmms(files.no_video)
    lm.task_dict = {"t": {"test": [{"visuals": [str(files.clip)]}, {"visuals": [{"array": [0.0]}]}]}}
    with pytest.raises(ValueError, match=r"^t doc 0: a video \(.*clip\.mp4\); this model reads no video"):
        lm.generate_until([_request("generate_until", (QUESTION, {}, _visual, 0, "t", "test"))])
    with pytest.raises(ValueError, match=r"^t doc 1: visual dict is neither a PIL image nor a video"):
        lm.loglikelihood([_request("loglikelihood", (QUESTION, "x", _visual, 1, "t", "test"))])
    ov = _lmms(files.ov)
    ov.task_dict = {"t": {"test": [{"visuals": [str(files.root / "broken.mp4")]}]}}
    with pytest.raises(ValueError, match=r"^t doc 0: unreadable_video: .*broken\.mp4"):
        ov.generate_until([_request("generate_until", (QUESTION, {}, _visual, 0, "t", "test"))])
