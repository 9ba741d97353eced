"""The demo page: its logic (train/demo.py) in-process on a tiny model, without a browser; then demo/app.py serving a
model trained by train/train.py, driven by headless Chromium (Debian's chromium and chromium-driver, through selenium)
as a person would use it."""

import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard, ModelCardData

from hf_tiny_transformer import TinyTransformerConfig, TinyTransformerForConditionalGeneration
from hf_tiny_transformer_train.data import VOCABULARY, build_tokenizer, task_target
from hf_tiny_transformer_train.demo import Demo, TrainedTask, read_source, read_trained_task
from tests.train_flags import corpus_flags, new_model_flags

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    """An untrained tiny model and the corpus's tokenizer, saved as train.py saves them, without a model card."""
    folder = tmp_path_factory.mktemp("demo") / "model"
    torch.manual_seed(0)
    config = TinyTransformerConfig(
        vocab_size=len(VOCABULARY), d_model=32, encoder_layers=2, decoder_layers=2, num_attention_heads=4, ffn_dim=64
    )
    TinyTransformerForConditionalGeneration(config).save_pretrained(folder)
    build_tokenizer().save_pretrained(folder)
    return folder


def greedy_answer(demo: Demo, source: str, max_new_tokens: int) -> tuple[str, list[str]]:
    """The model's greedy answer and the tokens it generated, computed apart from the page's code."""
    inputs = demo.tokenizer(source, return_tensors="pt")
    with torch.no_grad():
        generated = demo.model.generate(**inputs, do_sample=False, num_beams=1, max_new_tokens=max_new_tokens)
    answer = demo.tokenizer.decode(generated[0], skip_special_tokens=True)
    return answer, demo.tokenizer.convert_ids_to_tokens(generated[0, 1:].tolist())


@pytest.mark.parametrize("task", ["reverse", "sort", "add"])
def test_response_is_the_models_greedy_answer_beside_the_right_answer(model_folder, task):
    demo = Demo(str(model_folder), task=task)
    text = {"reverse": "5 3 9 3", "sort": "42, 7, 42, 13", "add": "7 + 95"}[task]
    response = demo.respond(text)
    source = {"reverse": "5 3 9 3", "sort": "42 7 42 13", "add": "75 9"}[task]
    assert response.source == source
    assert response.right_answer == task_target(task, source)
    # Room for twice the right answer and </s>.
    answer, generated_tokens = greedy_answer(demo, source, 2 * (len(response.right_answer.split()) + 1))
    assert response.answer == answer
    assert response.is_right == (response.answer == response.right_answer)
    # A heat map per decoder layer and head, and the colour bar; source tokens across, generated tokens down.
    config = demo.model.config
    assert len(response.figure.axes) == config.decoder_layers * config.num_attention_heads + 1
    first_map = response.figure.axes[0]
    assert [label.get_text() for label in first_map.get_xticklabels()] == [*source.split(), "</s>"]
    assert [label.get_text() for label in first_map.get_yticklabels()] == generated_tokens


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "Type some integers 0-99"),
        ("   ", "Type some integers 0-99"),
        ("reverse these", "'reverse' is not a number"),
        ("3 two 5", "'two' is not a number"),
        ("3.5", "'3.5' is not a number"),
        ("100", "100 is outside the model's vocabulary"),
        ("-3", "-3 is outside the model's vocabulary"),
        ("1 + 2", "'\\+' is for the add task"),
        (" ".join(["7"] * 256), "256 numbers are too many for this model: it reads at most 255"),
    ],
)
def test_input_the_model_cannot_read_gets_a_message_instead_of_an_answer(model_folder, text, message):
    response = Demo(str(model_folder), task="reverse").respond(text)
    assert response.message.startswith(message.replace("\\", ""))
    assert (response.answer, response.right_answer, response.figure, response.is_right) == ("", "", None, False)


@pytest.mark.parametrize(
    "text, source",
    [
        ("407 + 95", "75 9 40"),  # the sum's columns 7|5, 0|9, 4|0, least significant first
        ("4 0 7+9 5", "75 9 40"),  # digit by digit, `+` without spaces
        ("0 0 0 4 0 7 + 95", "75 9 40"),  # leading zeros dropped
        ("95 + 407", "57 90 4"),  # the first number's digit is the column's tens
        ("123456 + 1", "61 50 40 30 20 10"),  # longer than training: as many columns as the longer number has digits
    ],
)
def test_sums_are_written_as_the_corpus_writes_them(text, source):
    assert read_source(TrainedTask("add", 4), text, most_words=255) == source


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "Type two numbers with a '\\+' between them"),
        ("407 95", "Type two numbers with a '\\+' between them"),
        ("407 +", "Type two numbers with a '\\+' between them"),
        ("1 + 2 + 3", "Type two numbers with a '\\+' between them"),
        ("four + 2", "'four' is not a number"),
        ("-4 + 2", "-4 is negative"),
        ("1" * 32 + " + 1", "32-digit numbers are too long for this model: it reads at most 31 digits per number"),
    ],
)
def test_sums_the_model_cannot_read_raise_a_message(text, message):
    with pytest.raises(ValueError, match=message):
        read_source(TrainedTask("add", 4), text, most_words=31)


def test_notes_say_how_the_model_reads_the_input_and_when_it_is_longer_than_training(model_folder):
    demo = Demo(str(model_folder), task="add")
    demo.task = TrainedTask("add", 2)
    assert demo.notes("40 + 5", "5 40", "5 4 0") == (
        "The model reads `5 40`. Sums come least significant digit first: `5 4 0` is 45 = 40 + 5."
    )
    assert demo.notes("407 + 95", "75 9 40", "2 0 5 0").endswith(
        "This input is longer than any in training (at most 2 digits per operand): the model may fail on it."
    )
    demo.task = TrainedTask("copy", 3)
    assert demo.notes("1  2 3", "1 2 3", "1 2 3") == ""
    assert demo.notes("1, 2, 3, 4", "1 2 3 4", "1 2 3 4") == (
        "The model reads `1 2 3 4`. This input is longer than any in training (at most 3 integers): the model may "
        "fail on it."
    )


def write_card(folder: Path, card_data: ModelCardData) -> None:
    folder.mkdir()
    ModelCard(f"---\n{card_data.to_yaml()}\n---\n# a model\n").save(folder / "README.md")


def test_the_task_is_read_from_the_model_cards_tags_where_its_results_do_not_name_it(tmp_path):
    write_card(tmp_path / "sort", ModelCardData(tags=["tiny-transformer", "synthetic-data", "sort"]))
    assert read_trained_task(str(tmp_path / "sort")) == TrainedTask("sort", None)


def test_a_model_without_a_built_in_task_is_refused_with_the_flag_to_name_one(tmp_path, model_folder):
    with pytest.raises(ValueError, match="cannot read the model card .* name the task with --task"):
        read_trained_task(str(model_folder))
    write_card(tmp_path / "dates", ModelCardData(tags=["tiny-transformer", "seq2seq"]))
    with pytest.raises(ValueError, match="names no built-in task .* name one with --task"):
        Demo(str(tmp_path / "dates"))
    with pytest.raises(ValueError, match="task must be one of copy, reverse, sort, add; got 'divide'"):
        Demo(str(model_folder), task="divide")


# The page in a real browser.

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
# A reverse model of 1-4 integers: learnt in about 200 steps, seconds of CPU.
TINY_REVERSE = [
    *corpus_flags("reverse", min_length=1, max_length=4, train_size=4000, validation_size=64, test_size=64),
    "--longer_test_size", "0", "--typed_inputs_size", "0",
    *new_model_flags(d_model=32, layers=1, num_attention_heads=2, ffn_dim=64),
    "--per_device_train_batch_size", "64", "--per_device_eval_batch_size", "64",
    "--learning_rate", "3e-3", "--warmup_steps", "20", "--max_steps", "300", "--eval_steps", "100",
    "--save_steps", "300", "--target_exact_match", "0.9", "--disable_tqdm", "true",
]  # fmt: skip


@pytest.fixture(scope="module")
def chromium_driver():
    """A headless Chromium driven by selenium through Debian's chromedriver (selenium then downloads nothing); the
    test skips, saying why, where they are not installed."""
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.skip(
            f"needs Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER}): "
            "apt-get install chromium chromium-driver (.ci/run installs them when it runs as root)"
        )
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (the dev extra)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    with tempfile.TemporaryDirectory() as profile:
        for flag in (
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--window-size=1280,1400",
        ):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        yield driver
        driver.quit()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def served_page(tmp_path_factory, environment):
    """`python demo/app.py --model <folder>` serving on 127.0.0.1 a reverse model that train.py trained; yields the
    page's address and the model folder."""
    tmp = tmp_path_factory.mktemp("served")
    folder = tmp / "reverse-model"
    training = subprocess.run(
        [sys.executable, str(REPO / "train" / "train.py"), *TINY_REVERSE, "--output_dir", str(folder)],
        env=environment(tmp),
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert training.returncode == 0, (training.stdout + training.stderr)[-5000:]
    port = free_port()
    log = tmp / "app.log"
    with log.open("w") as output:
        app = subprocess.Popen(
            [sys.executable, str(REPO / "demo" / "app.py"), "--model", str(folder), "--port", str(port)],
            env=environment(tmp),
            cwd=tmp,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert app.poll() is None, f"demo/app.py ended:\n{log.read_text()[-5000:]}"
            assert time.monotonic() < deadline, f"no page at {url} after 300 s:\n{log.read_text()[-5000:]}"
            try:
                with urllib.request.urlopen(url, timeout=5):
                    break
            except OSError:
                time.sleep(0.5)
        yield url, folder
    finally:
        app.terminate()
        app.wait(timeout=30)
    # Whatever the page did, the server never printed a traceback.
    assert "Traceback" not in log.read_text(), log.read_text()[-5000:]


@pytest.mark.slow
def test_page_answers_typed_numbers_in_a_real_browser(chromium_driver, served_page, child_threads):
    # The browser first: where it is missing, the test skips before it trains a model.
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    url, folder = served_page
    driver, wait = chromium_driver, WebDriverWait(chromium_driver, 120)
    driver.get(url)
    numbers = wait.until(lambda page: page.find_element(By.CSS_SELECTOR, "#numbers textarea"))
    # The task comes from the folder's model card.
    assert driver.find_element(By.TAG_NAME, "h1").text == "TinyTransformer: reverse"

    def message() -> str:
        return driver.find_element(By.CSS_SELECTOR, "#message [data-testid='markdown']").text

    def submit(text: str, by_button: bool) -> str:
        """Type `text`, submit it and return the message the page shows once it has answered."""
        previous = message()
        numbers.clear()
        numbers.send_keys(text)
        if by_button:
            driver.find_element(By.CSS_SELECTOR, "#submit").click()
        else:
            numbers.send_keys(Keys.ENTER)
        wait.until(lambda page: message() not in ("", previous))
        return message()

    def shown(element_id: str) -> str:
        return driver.find_element(By.CSS_SELECTOR, f"#{element_id} textarea").get_attribute("value")

    verdict = submit("5 3 9 3", by_button=True)
    demo = Demo(str(folder))
    threads = torch.get_num_threads()
    torch.set_num_threads(child_threads)  # as in the page's process (environment's OMP_NUM_THREADS)
    try:
        expected = demo.respond("5 3 9 3")
    finally:
        torch.set_num_threads(threads)
    assert (shown("answer"), shown("right_answer")) == (expected.answer, "3 9 3 5")
    assert verdict == ("Right." if expected.is_right else "Wrong.")
    assert driver.find_element(By.CSS_SELECTOR, "#attention img").get_attribute("src")

    assert (
        submit("5 100 3", by_button=False)
        == "No answer: 100 is outside the model's vocabulary: it knows the integers 0-99 only."
    )
    assert (shown("answer"), shown("right_answer")) == ("", "")


@pytest.mark.slow
def test_app_on_a_folder_that_names_no_task_says_how_to_name_one(tmp_path, environment):
    completed = subprocess.run(
        [sys.executable, "-X", "importtime", str(REPO / "demo" / "app.py"), "--model", str(tmp_path)],
        env=environment(tmp_path),
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 2  # argparse's, for a bad argument
    assert f"cannot read the model card (README.md) of '{tmp_path}'" in completed.stderr
    assert "name the task with --task (copy, reverse, sort, add)" in completed.stderr
    assert "Traceback" not in completed.stderr
    imported = {
        line.rsplit("|", 1)[-1].strip() for line in completed.stderr.splitlines() if line.startswith("import time:")
    }
    assert "gradio" not in imported  # the argument is refused before Gradio's imports (about 2 s)
