"""`kflowers serve`: the JSON API answers every request (good ones with the model's answer, bad ones with a 4xx
JSON error) and keeps serving; concurrent requests are batched; the page works in a real browser; Ctrl-C and
SIGTERM stop it with exit 0. Every server here listens on 127.0.0.1 only."""

import concurrent.futures
import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import urllib.request
import zlib

import numpy as np
import pytest
from PIL import Image

import kflowers
from clitools import ENV

pytest.importorskip("starlette", reason="the serve extra (pip install -e '.[serve]')")
pytest.importorskip("httpx", reason="Starlette's test client needs httpx")

from starlette.testclient import TestClient  # noqa: E402

from kflowers.inference import serve  # noqa: E402


@pytest.fixture(scope="module")
def model(small_model_file):
    return kflowers.load_model(small_model_file)


@pytest.fixture(scope="module")
def client(model, small_model_file):
    app = serve.create_app(model, str(small_model_file), serve.ServeLimits(max_files=4, max_file_bytes=2_000_000))
    with TestClient(app) as client:
        yield client


@pytest.fixture(scope="module")
def photo(flowers_dir):
    return kflowers.scan_folder(flowers_dir).paths[0]


def jpeg(path):
    with open(path, "rb") as f:
        return f.read()


def ask(client, *files, query=""):
    return client.post("/predict" + query, files=[("file", (name, data, "image/jpeg")) for name, data in files])


def test_health_names_the_classes_the_model_and_its_input(client, small_model_file):
    answer = client.get("/health")
    assert answer.status_code == 200
    body = answer.json()
    assert body["status"] == "ok" and body["classes"] == ["daisy", "dandelion", "rose", "sunflower", "tulip"]
    assert body["model"] == str(small_model_file) and body["image_size"] == 32


def test_predict_answers_as_predict_images(client, model, flowers_dir):
    paths = kflowers.scan_folder(flowers_dir).paths[:3]
    answer = ask(client, *[(os.path.basename(p), jpeg(p)) for p in paths], query="?top=3")
    assert answer.status_code == 200
    predictions = answer.json()["predictions"]
    assert [p["image"] for p in predictions] == [os.path.basename(p) for p in paths]
    for prediction, reference in zip(predictions, kflowers.predict_images(model, paths, top_k=3)):
        assert [t["class"] for t in prediction["top"]] == [name for name, _ in reference]
        np.testing.assert_allclose([t["probability"] for t in prediction["top"]], [p for _, p in reference], atol=1e-5)
        assert "gradcam" not in prediction


def test_gradcam_is_a_png_of_the_photo(client, photo):
    import base64

    prediction = ask(client, ("rose.jpg", jpeg(photo)), query="?gradcam=1").json()["predictions"][0]
    head, data = prediction["gradcam"].split(",", 1)
    assert head == "data:image/png;base64"
    overlay = Image.open(io.BytesIO(base64.b64decode(data)))
    assert overlay.format == "PNG" and overlay.size == Image.open(photo).size  # small photos keep their size
    assert len(prediction["top"]) == 5


def png_claiming(width, height):
    """A valid PNG header that declares `width` x `height` pixels, with almost no data: a decompression bomb's
    first bytes (the server must refuse it from its header, before decoding)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def truncated(photo):
    data = jpeg(photo)
    return data[: len(data) // 2]


# One row an attack: what is sent, the status, words of the error.
BAD_REQUESTS = {
    "a decompression-bomb PNG": (lambda p: [("bomb.png", png_claiming(100_000, 100_000))], 413, "pixels"),
    "0 bytes": (lambda p: [("empty.jpg", b"")], 400, "empty"),
    "an HTML file named .jpg": (lambda p: [("page.jpg", b"<html><body>hi</body></html>")], 415, "not an image"),
    "a truncated JPEG": (lambda p: [("half.jpg", truncated(p))], 415, "half.jpg"),
    "50 MB of noise": (lambda p: [("noise.jpg", os.urandom(50_000_000))], 413, "bytes"),
    "1,000 files in one request": (lambda p: [(f"{i}.jpg", b"x") for i in range(1000)], 413, "at most 4"),
    "too many photos for the limit": (lambda p: [(f"{i}.jpg", jpeg(p)) for i in range(5)], 413, "at most 4"),
}


@pytest.mark.parametrize("attack", list(BAD_REQUESTS))
def test_every_bad_upload_is_a_4xx_json_error_and_the_next_request_is_answered(client, photo, attack):
    files, status, words = BAD_REQUESTS[attack]
    answer = ask(client, *files(photo))
    assert answer.status_code == status, answer.text[:300]
    assert words in answer.json()["error"]
    assert ask(client, ("good.jpg", jpeg(photo))).status_code == 200


@pytest.mark.parametrize(
    "request_, status, words",
    [
        (lambda c: c.post("/predict", data={"other": "x"}), 415, "multipart/form-data"),
        (lambda c: c.post("/predict", files=[("other", ("a.jpg", b"x", "image/jpeg"))]), 400, "field 'file'"),
        (lambda c: c.post("/predict?top=many", files=[("file", ("a.jpg", b"x", "image/jpeg"))]), 400, "top=many"),
        (lambda c: c.get("/predict"), 405, "Method Not Allowed"),
        (lambda c: c.get("/nowhere"), 404, "Not Found"),
    ],
    ids=["not multipart", "no file field", "bad top", "GET /predict", "unknown path"],
)
def test_malformed_requests_are_4xx_json(client, photo, request_, status, words):
    answer = request_(client)
    assert answer.status_code == status and words in answer.json()["error"]
    assert ask(client, ("good.jpg", jpeg(photo))).status_code == 200


def test_no_upload_is_written_to_disk_under_its_own_name(client, photo, tmp_path, monkeypatch):
    """A 1.4 MB upload (beyond the 1 MiB Starlette keeps in memory) is spooled to an anonymous temporary file:
    no file of its name appears in the temporary folder or the working folder."""
    import tempfile

    monkeypatch.chdir(tmp_path)
    noise = np.random.default_rng(0).integers(0, 256, (600, 800, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG")
    assert 1 << 20 < buffer.tell() < 2_000_000
    name = "kflowers-upload-name-check.png"
    assert ask(client, (name, buffer.getvalue())).status_code == 200
    for folder in (tempfile.gettempdir(), str(tmp_path)):
        found = [entry for entry in os.listdir(folder) if name in entry]
        assert not found, found


def test_a_full_queue_is_503_never_a_wait(client, photo, monkeypatch):
    batcher = client.app.state.batcher
    monkeypatch.setattr(batcher, "room", lambda: 0)
    answer = ask(client, ("good.jpg", jpeg(photo)))
    assert answer.status_code == 503 and "busy" in answer.json()["error"]
    assert answer.headers["retry-after"] == "1"
    monkeypatch.undo()
    assert ask(client, ("good.jpg", jpeg(photo))).status_code == 200


def test_the_batcher_refuses_beyond_its_queue_and_batches_what_waits():
    import asyncio
    import threading

    from kflowers.inference.batcher import MicroBatcher
    from kflowers.inference.batcher import QueueFull

    gate = threading.Event()
    sizes = []

    def function(batch):
        gate.wait(10)
        sizes.append(len(batch))
        return list(batch.sum(axis=1))

    async def scenario():
        batcher = MicroBatcher(function, max_batch=8, max_wait=0.001, max_queue=4)
        await batcher.start()
        first = asyncio.ensure_future(batcher.submit(np.ones(2)))  # taken by the model thread, which waits
        while batcher.batches == 0:
            await asyncio.sleep(0)
        waiting = [asyncio.ensure_future(batcher.submit(np.full(2, i))) for i in range(4)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFull):
            await batcher.submit(np.zeros(2))
        gate.set()
        results = await asyncio.gather(first, *waiting)
        await batcher.stop()
        return results

    results = asyncio.run(scenario())
    assert results == [2.0, 0.0, 2.0, 4.0, 6.0]
    assert sizes == [1, 4]  # the four that waited went through in one batch


def test_a_missing_serve_extra_is_one_line(small_model_file, monkeypatch, capsys):
    import importlib.util

    from kflowers.cli.main import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    assert main(["serve", "--model", str(small_model_file)]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("kflowers serve: error: kflowers serve needs uvicorn: pip install 'kflowers[serve]'")


def test_a_port_in_use_is_one_line(small_model_file, capsys):
    import socket

    from kflowers.cli.main import main

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        assert main(["serve", "--model", str(small_model_file), "--port", str(taken.getsockname()[1])]) == 2
    finally:
        taken.close()
    assert "can't serve on 127.0.0.1:" in capsys.readouterr().err


# ------------------------------------------------------------------ a real server, in its own process


@pytest.fixture
def server(small_model_file):
    """`kflowers serve` on a free port of 127.0.0.1; yields `(process, url)`."""
    process = subprocess.Popen(
        [sys.executable, "-m", "kflowers", "serve", "--model", str(small_model_file), "--port", "0", "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        start_new_session=True,
    )
    line = process.stdout.readline()  # printed once the socket listens
    assert line.startswith("serving "), process.stderr.read()[-2000:] if process.poll() is not None else line
    url = line.split(" at ")[1].split()[0]
    yield process, url
    if process.poll() is None:
        process.kill()
        process.wait(30)


def post(url, files, timeout=60):
    boundary = "kflowers-test-boundary"
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        f"Content-Type: image/jpeg\r\n\r\n".encode()
        + data
        + b"\r\n"
        for name, data in files
    )
    body += f"--{boundary}--\r\n".encode()
    request = urllib.request.Request(
        url + "/predict", data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status, json.loads(response.read())


@pytest.mark.slow
@pytest.mark.one_backend
def test_32_clients_at_once_are_all_answered_in_shared_batches(server, photo):
    """The load test: 32 clients x 4 requests at once, bounded in count and time, on 127.0.0.1. All are
    answered 200, with the answer a lone request gets, and fewer forward passes than photos (batching).
    Throughput is measured in benchmarks/serve_load.py, not here."""
    _, url = server
    data = jpeg(photo)
    alone = post(url, [("one.jpg", data)])[1]["predictions"][0]["top"]

    def client(i):
        return [post(url, [(f"{i}-{k}.jpg", data)]) for k in range(4)]

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        answers = [a for answers in pool.map(client, range(32)) for a in answers]
    assert len(answers) == 128 and all(status == 200 for status, _ in answers)
    for _, body in answers:
        np.testing.assert_allclose(
            [t["probability"] for t in body["predictions"][0]["top"]], [t["probability"] for t in alone], atol=1e-5
        )
    with urllib.request.urlopen(url + "/health", timeout=30) as response:
        answered = json.loads(response.read())["answered"]
    assert answered["photos"] == 129
    assert answered["batches"] < answered["photos"]


@pytest.mark.slow
@pytest.mark.one_backend
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["Ctrl-C", "SIGTERM"])
def test_ctrl_c_and_sigterm_stop_it_cleanly(server, photo, sig):
    process, url = server
    assert post(url, [("one.jpg", jpeg(photo))])[0] == 200
    os.killpg(process.pid, sig) if sig == signal.SIGINT else process.send_signal(sig)
    assert process.wait(60) == 0, process.stderr.read()[-2000:]


@pytest.mark.slow
@pytest.mark.one_backend
def test_a_request_in_flight_at_sigterm_is_answered(small_model_file, photo):
    """SIGTERM while a photo waits in the batcher (a 3 s wait for company): the request is answered 200 and the
    server then exits 0."""
    process = subprocess.Popen(
        [sys.executable, "-m", "kflowers", "serve", "--model", str(small_model_file), "--port", "0", "--quiet"]
        + ["--max-wait-ms", "3000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        url = process.stdout.readline().split(" at ")[1].split()[0]
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            answer = pool.submit(post, url, [("one.jpg", jpeg(photo))])
            for _ in range(5000):  # until the photo is in the batcher's queue (bounded)
                with urllib.request.urlopen(url + "/health", timeout=30) as response:
                    if json.loads(response.read())["answered"]["waiting"]:
                        break
            else:
                pytest.fail("the photo never reached the batcher's queue")
            process.send_signal(signal.SIGTERM)
            status, body = answer.result(timeout=60)
        assert status == 200 and body["predictions"][0]["top"]
        assert process.wait(60) == 0, process.stderr.read()[-2000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)


@pytest.mark.slow
@pytest.mark.one_backend
def test_the_page_shows_a_photos_top_class_in_a_real_browser(server, photo, tmp_path):
    """Debian's chromium and chromium-driver, driven by selenium: choose a photo in the page's file input,
    and see its top class rendered (the one the API gives)."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not (browser and driver_path):
        pytest.skip("no chromium and chromedriver (Debian: apt-get install chromium chromium-driver)")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _, url = server
    expected = post(url, [("photo.jpg", jpeg(photo))])[1]["predictions"][0]["top"][0]["class"]
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"):
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_path), options=options)
    try:
        driver.get(url + "/")
        driver.find_element(By.ID, "files").send_keys(os.path.abspath(photo))
        shown = WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".top-class"))
        assert shown[0].text == expected
        rows = driver.find_elements(By.CSS_SELECTOR, ".row")
        assert len(rows) == 5 and rows[0].get_attribute("data-class") == expected
        overlay = driver.find_element(By.CSS_SELECTOR, "img[alt='where it looked']")
        assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", overlay)
    finally:
        driver.quit()
