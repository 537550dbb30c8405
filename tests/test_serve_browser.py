"""The chat page in a real browser (headless Chromium driven by Selenium): type, watch the reply stream
in, stop it mid-way, go on with a second turn; a screenshot is left in test-artifacts/."""

import os
import shutil
import time
from pathlib import Path

import pytest
from _chat_helpers import Server, chat_tokenizer, endless, random_gpt, save_run

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM, DRIVER = shutil.which("chromium") or "/usr/bin/chromium", shutil.which("chromedriver")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (os.path.exists(CHROMIUM) and DRIVER),
                       reason="needs Chromium and its ChromeDriver (Debian: apt-get install chromium "
                              "chromium-driver)"),
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tok = chat_tokenizer()
    model = endless(random_gpt(tok.vocab_size, block_size=4096), tok)
    return save_run(tmp_path_factory.mktemp("page") / "pagerun", model, tok)


@pytest.fixture(scope="module")
def server(run, tmp_path_factory):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    s = Server(run, tmp_path_factory.mktemp("log") / "server.log", env)
    try:
        yield s.wait()
    finally:
        s.stop()


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1000,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)  # named: nothing is downloaded
    try:
        yield driver
    finally:
        driver.quit()


def wait_until(check, timeout=30.0, what="the page"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} did not get there in {timeout} s")


def test_chat_in_the_page_streams_stops_and_goes_on(server, browser, run):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from scratchllm.chat.engine import Engine, Sampling

    def state():
        return browser.find_element(By.TAG_NAME, "body").get_attribute("data-state")

    def replies():  # textContent: the text as streamed, spaces and all
        return browser.execute_script(
            "return [...document.querySelectorAll('.message.assistant')].map(e => e.textContent)")

    browser.get(server.url + "/")
    wait_until(lambda: state() == "idle", what="the page's model")
    assert "pagerun" in browser.find_element(By.ID, "model").text
    for field, value in (("temperature", "0"), ("max-tokens", "3000")):
        box = browser.find_element(By.ID, field)
        box.clear()
        box.send_keys(value)
    browser.find_element(By.ID, "input").send_keys("Hello there", Keys.ENTER)
    # The reply streams in: it is on the page, and longer a moment later, while still being written.
    first = wait_until(lambda: len(r := replies()[-1]) > 10 and r, what="streamed text")
    wait_until(lambda: len(replies()[-1]) > len(first) + 10, what="more streamed text")
    assert state() == "generating"
    browser.find_element(By.ID, "stop").click()
    wait_until(lambda: state() == "idle", what="the stop")
    stopped = replies()[-1]
    time.sleep(0.5)
    assert replies()[-1] == stopped  # nothing more arrives
    assert "stopped" in browser.find_element(By.CSS_SELECTOR, ".message.assistant").get_attribute("class")
    wait_until(lambda: server.health()["active"] == 0, timeout=5, what="the server's cancel")
    assert "cancelled" in server.log.read_text()

    box = browser.find_element(By.ID, "max-tokens")
    box.clear()
    box.send_keys("8")
    browser.find_element(By.ID, "input").send_keys("And you?", Keys.ENTER)
    wait_until(lambda: len(replies()) == 2 and state() == "idle", what="the second reply")
    (ROOT / "test-artifacts").mkdir(exist_ok=True)
    browser.save_screenshot(str(ROOT / "test-artifacts" / "chat_page.png"))
    # The second turn answers the whole conversation, the stopped reply included, as the engine does.
    history = browser.execute_script("return history")  # the conversation the page keeps and sends
    assert history[:3] == [{"role": "user", "content": "Hello there"},
                           {"role": "assistant", "content": stopped}, {"role": "user", "content": "And you?"}]
    engine = Engine.from_run(run)
    expect = engine.complete(engine.prompt_ids(history[:3]), Sampling(temperature=0, max_new_tokens=8)).run()
    assert replies()[-1] == expect and history[3] == {"role": "assistant", "content": expect}
    assert [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".message.user")] == ["Hello there",
                                                                                          "And you?"]
