"""llava-lite-web in a real headless browser (Debian's chromium + chromium-driver, driven by Selenium).

The page loads, an image is uploaded, a question gets its answer on the page, and a
screenshot is saved (``web_demo.png`` in the test's folder, and in ``$LLAVA_LITE_ARTIFACTS``
when set). The browser resolves no host but 127.0.0.1, so the page cannot fetch anything
from outside. Skipped, with the reason, where the browser, its driver or the extras are missing.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
from pathlib import Path

import pytest
from PIL import Image

from llava_lite.config import LlavaConfig
from llava_lite.data import LlavaProcessor
from llava_lite.inference import ChatSession, DecodingSettings, web
from llava_lite.modeling import LlavaModel

pytest.importorskip("gradio", reason="the web demo is the optional extra llava_lite[web]")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (in the dev extra) is not installed")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="no headless browser: apt-get install chromium chromium-driver (Debian's packages)",
)
MAX_NEW_TOKENS = 8


def _letters(text: str) -> str:
    """Letters and digits only: what survives the chat's Markdown rendering of a random reply."""
    return re.sub(r"[^A-Za-z0-9]", "", text)


@pytest.fixture
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",  # offline: loopback only
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def test_page_upload_question_answer_screenshot(browser, tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    LlavaModel(LlavaConfig.from_name("tiny")).save_pretrained(model_dir)
    image = tmp_path / "green.png"
    Image.new("RGB", (64, 48), (10, 200, 30)).save(image)
    model = LlavaModel.from_pretrained(model_dir).eval()
    processor = LlavaProcessor.from_model(model)
    settings = DecodingSettings(max_new_tokens=MAX_NEW_TOKENS)
    expected = ChatSession(model, processor, image=image, settings=settings).ask("What is this?")
    assert _letters(expected)  # something to look for on the page

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = web.build_app(model, processor, title="llava_lite browser test")
    url = web.launch(app, port=port, block=False)
    try:
        wait = WebDriverWait(browser, 60)
        browser.get(url)
        question = wait.until(
            expected_conditions.element_to_be_clickable((By.CSS_SELECTOR, "#question textarea"))
        )
        assert "llava_lite browser test" in browser.title

        browser.find_element(By.CSS_SELECTOR, "#image input[type=file]").send_keys(str(image))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#image img"))  # the upload shows

        max_tokens = browser.find_element(By.CSS_SELECTOR, "#max_new_tokens input[type=number]")
        max_tokens.clear()
        max_tokens.send_keys(str(MAX_NEW_TOKENS))
        question.send_keys("What is this?")
        browser.find_element(By.CSS_SELECTOR, "#send").click()

        def answered(driver) -> bool:
            text = driver.find_element(By.CSS_SELECTOR, "#chat").text
            return "What is this?" in text and _letters(expected) in _letters(text)

        wait.until(answered)
        shot = tmp_path / "web_demo.png"
        assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        if artifacts := os.environ.get("LLAVA_LITE_ARTIFACTS"):
            Path(artifacts).mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, Path(artifacts) / "web_demo.png")
    finally:
        app.close()
