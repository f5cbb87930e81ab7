"""llava-lite-chat and ChatSession with a tiny random model saved to a folder."""

import io

import pytest
from PIL import Image

from llava_lite.cli import chat as chat_cli
from llava_lite.config import LlavaConfig
from llava_lite.data import LlavaProcessor
from llava_lite.inference import ChatSession, DecodingSettings
from llava_lite.modeling import LlavaModel


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("chat") / "model"
    LlavaModel(LlavaConfig.from_name("tiny")).save_pretrained(folder)
    Image.new("RGB", (40, 30), (10, 200, 30)).save(folder.parent / "green.png")
    return folder


@pytest.fixture(scope="module")
def loaded(model_dir):
    model = LlavaModel.from_pretrained(model_dir).eval()
    return model, LlavaProcessor.from_model(model)


def test_one_shot_prints_an_answer(model_dir, capsys):
    image = model_dir.parent / "green.png"
    argv = [str(model_dir), "--image", str(image), "--question", "What is this?", "--max-new-tokens", "5"]
    chat_cli.main(argv)
    out = capsys.readouterr().out.strip()
    assert out  # some decoded text
    # the same question through the library gives the same greedy answer
    model = LlavaModel.from_pretrained(model_dir).eval()
    processor = LlavaProcessor.from_model(model)
    session = ChatSession(model, processor, image=image, settings=DecodingSettings(max_new_tokens=5))
    assert session.ask("What is this?") == out


def test_history_goes_into_the_next_prompt(loaded, model_dir):
    model, processor = loaded
    session = ChatSession(
        model, processor, image=model_dir.parent / "green.png", settings=DecodingSettings(max_new_tokens=4)
    )
    first = session.ask("What is this?")
    prompt = session.fitting_prompt("And the colour?")
    text = processor.tokenizer.decode(prompt["input_ids"], skip_special_tokens=False)
    assert "What is this?" in text and text.count("USER:") == 2
    assert int((prompt["input_ids"] == processor.image_token_id).sum()) == model.num_image_tokens
    session.ask("And the colour?")
    assert [q for q, _ in session.history] == ["What is this?", "And the colour?"]
    assert session.history[0][1] == first
    session.reset()
    assert session.history == []


def test_oldest_turns_dropped_to_fit(loaded):
    model, processor = loaded
    session = ChatSession(model, processor, settings=DecodingSettings(max_new_tokens=4))
    session.history = [(f"question number {i} about nothing much", "some answer") for i in range(40)]
    prompt = session.fitting_prompt("Last one?")
    assert prompt["input_ids"].numel() <= processor.model_max_length - 4
    assert 0 < len(session.history) < 40
    with pytest.raises(ValueError, match="exceeds model_max_length"):
        ChatSession(model, processor, settings=DecodingSettings(max_new_tokens=10_000)).ask("hi")


def test_interactive_loop_reset_and_exit(loaded):
    model, processor = loaded
    session = ChatSession(model, processor, settings=DecodingSettings(max_new_tokens=3))
    out = io.StringIO()
    answered = chat_cli.interact(session, io.StringIO("hello\n\n/reset\nhow are you?\n/exit\nnever\n"), out)
    assert answered == 2
    text = out.getvalue()  # a random model's reply may span lines (non-ASCII bytes decode now)
    assert text.count("ASSISTANT: ") == 2
    assert text.index("ASSISTANT: ") < text.index("\n(history cleared)\n") < text.rindex("ASSISTANT: ")
    assert [q for q, _ in session.history] == ["how are you?"]


def test_bad_model_folder_exits_cleanly(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LLAVA_LITE_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        chat_cli.main([str(tmp_path), "--question", "hi"])
    assert exit_info.value.code == 1
    error = capsys.readouterr().err.splitlines()[0]
    assert error.startswith("llava-lite-chat: error: ") and "not a llava_lite model folder" in error
