"""llava-lite-chat and ChatSession with a tiny random model saved to a folder."""

import io
import threading

import pytest
import torch
from PIL import Image

from llava_lite.cli import chat as chat_cli
from llava_lite.config import LlavaConfig
from llava_lite.data import LlavaProcessor
from llava_lite.inference import ChatSession, DecodingSettings
from llava_lite.modeling import LlavaModel


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("chat") / "model"
    torch.manual_seed(0)  # the same random weights whatever ran before
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


class _Recorder(io.StringIO):
    """stdout that remembers each write, to see a reply arrive in pieces."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


def _direct_reply(model, processor, image, question: str, max_new_tokens: int) -> str:
    """The reply through LlavaModel.generate alone, without the chat's streaming thread."""
    prompt = processor.prompt(question, image)
    pixel_values = prompt["pixel_values"]  # [3, H, W] for one image, [N, 3, H, W] for several
    pixel_values = (
        pixel_values[None] if pixel_values is not None and pixel_values.dim() == 3 else pixel_values
    )
    new_tokens = model.generate(
        prompt["input_ids"][None],
        pixel_values,
        **DecodingSettings(max_new_tokens=max_new_tokens).generate_kwargs(processor.stop_token_ids),
    )
    return processor.tokenizer.decode(new_tokens[0], skip_special_tokens=True).strip()


def test_stream_yields_the_reply_in_pieces_equal_to_plain_generate(loaded, model_dir):
    model, processor = loaded
    image = model_dir.parent / "green.png"
    session = ChatSession(model, processor, image=image, settings=DecodingSettings(max_new_tokens=12))
    pieces = list(session.stream("What is this?"))
    reply = _direct_reply(model, processor, str(image), "What is this?", 12)
    assert len(pieces) > 1  # streamed, not one block at the end
    assert "".join(pieces).strip() == reply == session.history[-1][1]


def test_closing_a_stream_stops_generation_and_keeps_no_turn(loaded):
    model, processor = loaded
    session = ChatSession(model, processor, settings=DecodingSettings(max_new_tokens=64))
    pieces = session.stream("Tell me a long story.")
    next(pieces)
    pieces.close()
    assert session.history == []
    assert not any(t.name == "llava-lite-chat" for t in threading.enumerate())  # worker joined


def test_generation_errors_reach_the_reader(loaded, monkeypatch):
    model, processor = loaded
    session = ChatSession(model, processor, settings=DecodingSettings(max_new_tokens=4))

    def broken(*args, **kwargs):
        raise RuntimeError("device lost")

    monkeypatch.setattr(model, "generate", broken)
    with pytest.raises(RuntimeError, match="device lost"):
        session.ask("hi")
    assert session.history == []


def test_image_command_adds_an_image_and_starts_a_new_conversation_about_both(loaded, model_dir, tmp_path):
    model, processor = loaded
    green, red = model_dir.parent / "green.png", tmp_path / "red.png"
    Image.new("RGB", (32, 32), (220, 20, 20)).save(red)
    session = ChatSession(model, processor, image=green, settings=DecodingSettings(max_new_tokens=6))
    out = _Recorder()
    script = f"What is this?\n/image {red}\nWhat is this?\n/image {tmp_path / 'missing.png'}\n/imag\n/exit\n"
    answered = chat_cli.interact(session, io.StringIO(script), out, prompt=True)
    assert answered == 2
    text = out.getvalue()
    assert text.count("USER: ") == 6 and text.count("ASSISTANT: ") == 2  # whose turn it is
    assert f"(image 2 added: {red}; new conversation about 2 images)\n" in text
    assert "(image not added: " in text and "missing.png" in text  # the chat goes on
    assert "(unknown command /imag; valid: /image PATH, /video PATH, /clear, /reset, /exit)" in text
    # The second answer is about both images, with no trace of the first conversation.
    both = [str(green), str(red)]
    assert session.history == [("What is this?", _direct_reply(model, processor, both, "What is this?", 6))]
    first = _direct_reply(model, processor, str(green), "What is this?", 6)
    assert f"ASSISTANT: {first}" in text
    reply_writes = out.writes[out.writes.index("ASSISTANT: ") + 1 :]
    assert reply_writes.index("\n") > 1  # the first reply arrived in several writes


def test_clear_drops_the_images_for_a_text_only_conversation(loaded, model_dir):
    model, processor = loaded
    session = ChatSession(
        model, processor, image=model_dir.parent / "green.png", settings=DecodingSettings(max_new_tokens=4)
    )
    session.ask("What is this?")
    out = io.StringIO()
    chat_cli.interact(session, io.StringIO("/clear\nWhat is this?\n"), out, prompt=False)
    assert "(images and video dropped; new conversation)\n" in out.getvalue()
    assert session.images == [] and session.history == [
        ("What is this?", _direct_reply(model, processor, None, "What is this?", 4))
    ]
