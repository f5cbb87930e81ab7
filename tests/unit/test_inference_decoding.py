"""DecodingSettings: one clear error per bad value; temperature 0 means greedy; stop tokens reach generate."""

import pytest

from llava_lite.inference import DecodingSettings


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_new_tokens": 0}, r"max_new_tokens=0; valid: 1 or more"),
        ({"temperature": 0.0}, r"temperature=0.0; valid: > 0"),
        ({"top_p": 1.5}, r"top_p=1.5; valid: 0 < top_p <= 1"),
    ],
)
def test_bad_values_name_the_setting(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        DecodingSettings(**kwargs)


def test_temperature_zero_is_greedy_and_positive_samples() -> None:
    greedy = DecodingSettings.from_temperature(16, 0.0, top_p=0.5)
    assert (greedy.do_sample, greedy.temperature, greedy.top_p) == (False, 1.0, 1.0)
    sampled = DecodingSettings.from_temperature(16, 0.7, top_p=0.9)
    assert (sampled.do_sample, sampled.temperature, sampled.top_p) == (True, 0.7, 0.9)
    with pytest.raises(ValueError, match=r"temperature=-1; valid: 0 \(greedy\) or more"):
        DecodingSettings.from_temperature(16, -1)


def test_generate_kwargs_stop_at_the_templates_tokens() -> None:
    kwargs = DecodingSettings(max_new_tokens=5).generate_kwargs([7, 9])
    assert kwargs == {
        "max_new_tokens": 5,
        "do_sample": False,
        "temperature": 1.0,
        "top_p": 1.0,
        "eos_token_id": [7, 9],
        "use_cache": True,
    }
    assert DecodingSettings().generate_kwargs(())["eos_token_id"] is None  # the tokenizer's EOS
