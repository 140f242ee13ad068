"""`kflowers serve`: a page where anyone can try the model, and a JSON API, on Starlette and uvicorn.

- `GET /`: the page (`page.html`, self-contained): choose or drop photos,
  see each one's top classes as bars and its Grad-CAM overlay.
- `GET /health`: `{"status": "ok", "classes": [...], "model": ..., "image_size": ...,
  "precision": ..., "answered": {"photos": N, "batches": M, "waiting": W}}` (M below N: batching works;
  W: photos in the queue now).
- `POST /predict` (multipart, field `file`, one or more photos; `?top=K`,
  `?gradcam=1`): `{"predictions": [{"image": NAME, "top": [{"class": C,
  "probability": P}, ...]}]}`, with `"gradcam"` (a PNG data URL) per photo
  when asked.

Concurrent requests' photos are answered together (`MicroBatcher`), on a
thread of the model's own. Every bad request gets a 4xx JSON answer
(`{"error": "..."}`) and the server goes on: uploads are bounded in bytes,
files and pixels (413), empty or undecodable ones are 400/415, a full queue
is 503. Uploads are decoded from memory or from Starlette's anonymous
spooled files, never saved under their own names.

Example:
```python
app = create_app(kflowers.load_model("runs/latest/model.keras"), "runs/latest/model.keras")
# uvicorn.run(app, host="127.0.0.1", port=8000)
```
"""

import asyncio
import base64
import contextlib
import dataclasses
import importlib.util
import io
import ipaddress
import logging
import os
import signal
import socket
import threading

import numpy as np

from kflowers.errors import KflowersError
from kflowers.inference.batcher import MicroBatcher
from kflowers.inference.batcher import QueueFull

log = logging.getLogger("kflowers")

# What `pip install 'kflowers[serve]'` brings: the module each needs, and its package's name.
SERVE_PACKAGES = {"starlette": "starlette", "uvicorn": "uvicorn", "python_multipart": "python-multipart"}


def check_serve_installed():
    """Raise `KflowersError` naming the `serve` extra when its packages are missing (found without importing)."""
    missing = [name for module, name in SERVE_PACKAGES.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise KflowersError(
            f"kflowers serve needs {', '.join(missing)}: pip install 'kflowers[serve]' (or pip install -e "
            "'.[serve]' in kflowers's folder)"
        )


@dataclasses.dataclass
class ServeLimits:
    """How much one request, and the server, may ask for.

    Args:
        max_batch: int. Photos per forward pass. Defaults to `32`.
        max_wait_ms: float. How long a photo waits for others to join its
            batch. Defaults to `5`.
        max_queue: int. Photos waiting for the model; beyond it, 503.
            Defaults to `256`.
        max_file_bytes: int. One upload's size; beyond it, 413. Defaults to
            10 MB.
        max_request_bytes: int. A whole request body; beyond it, 413.
            Defaults to 20 MB.
        max_files: int. Photos in one request; beyond it, 413. Defaults to `16`.
        max_pixels: int. Pixels of one photo (width x height, read from its
            header before decoding); beyond it, 413. Defaults to 40 million.
    """

    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 256
    max_file_bytes: int = 10_000_000
    max_request_bytes: int = 20_000_000
    max_files: int = 16
    max_pixels: int = 40_000_000


class RequestError(Exception):
    """A request the server refuses: its status and the one line the client reads."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


def create_app(model, model_path, limits=None, precision="float32"):
    """The Starlette application that serves `model` (see the module's docstring).

    Args:
        model: `keras.Model`. A kflowers classifier (`kflowers.load_model`).
        model_path: str. The model's file, as `/health` names it.
        limits: `ServeLimits` or `None`. Defaults to `ServeLimits()`.
        precision: str. `"float32"` or `"bfloat16"` (see
            `kflowers.inference.predict.inference_precision`). Defaults to
            `"float32"`.
    """
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.responses import HTMLResponse
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from kflowers.inference.predict import class_names_of
    from kflowers.inference.predict import output_activation

    limits = limits or ServeLimits()
    names = class_names_of(model)
    activation = output_activation(model)
    size = model.input_shape[1] or 224
    batcher = MicroBatcher(
        _model_function(model, precision), limits.max_batch, limits.max_wait_ms / 1000, limits.max_queue
    )
    page = _page()

    async def index(request):
        return HTMLResponse(page)

    async def health(request):
        answered = {"photos": batcher.photos, "batches": batcher.batches, "waiting": batcher.waiting()}
        return JSONResponse(
            {
                "status": "ok",
                "classes": names,
                "model": os.fspath(model_path),
                "image_size": size,
                "precision": precision,
                "answered": answered,
            }
        )

    async def predict(request):
        try:
            top, gradcam = _query(request, len(names))
            uploads = await _uploads(request, limits)
            decoded = await asyncio.gather(*(_decode(upload, size, limits, gradcam) for upload in uploads))
            if batcher.room() < len(decoded):
                raise QueueFull("the model's queue is full")
            answers = await asyncio.gather(*(batcher.submit(pixels) for _, pixels, _ in decoded))
        except RequestError as error:
            return _error(error.status, str(error))
        except QueueFull as error:
            return _error(503, f"busy: {error}; try again in a moment", headers={"Retry-After": "1"})
        predictions = await asyncio.to_thread(_predictions, decoded, answers, names, top, gradcam, activation)
        return JSONResponse({"predictions": predictions})

    app = Starlette(
        routes=[Route("/", index), Route("/health", health), Route("/predict", predict, methods=["POST"])],
        exception_handlers={HTTPException: _http_error, Exception: _server_error},
        lifespan=_lifespan,
    )
    app.state.batcher = batcher
    return app


async def _http_error(request, error):
    """404, 405 and Starlette's other HTTP errors, as JSON."""
    return _error(error.status_code, str(error.detail))


async def _server_error(request, error):
    log.error("serving %s: %s", request.url.path, error, exc_info=error)
    return _error(500, f"internal error: {type(error).__name__}")


@contextlib.asynccontextmanager
async def _lifespan(app):
    """The batcher's thread runs while the server does."""
    await app.state.batcher.start()
    try:
        yield
    finally:
        await app.state.batcher.stop()


def _error(status, message, headers=None):
    from starlette.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _query(request, classes):
    """`?top=K` (1 to the number of classes, default 5) and `?gradcam=1`."""
    text = request.query_params.get("top", "5")
    if not text.isdigit() or int(text) < 1:
        raise RequestError(400, f"top={text}: a whole number of classes, at least 1")
    gradcam = request.query_params.get("gradcam", "0").lower() in ("1", "true", "yes")
    return min(int(text), classes), gradcam


async def _uploads(request, limits):
    """The request's uploads in the field `file`, read with the body bounded in bytes and files."""
    from starlette.exceptions import HTTPException
    from starlette.requests import Request

    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise RequestError(415, "send the photos as multipart/form-data, in the field 'file'")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limits.max_request_bytes:
        raise RequestError(413, f"the request is {int(declared):,} bytes; at most {limits.max_request_bytes:,}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limits.max_request_bytes:
            raise RequestError(413, f"the request is over {limits.max_request_bytes:,} bytes")

    async def replay():
        return {"type": "http.request", "body": bytes(body), "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=limits.max_files, max_fields=limits.max_files + 8)
    except HTTPException as error:  # Starlette's word on a malformed or oversized form
        status = 413 if "too many" in str(error.detail).lower() else 400
        raise RequestError(status, f"{error.detail} (at most {limits.max_files} photos a request)") from None
    uploads = [value for value in form.getlist("file") if hasattr(value, "filename")]
    if not uploads:
        raise RequestError(400, "no photo: send one or more files in the multipart field 'file'")
    for upload in uploads:
        if upload.size is not None and upload.size > limits.max_file_bytes:
            raise RequestError(413, f"{_name(upload)} is {upload.size:,} bytes; at most {limits.max_file_bytes:,}")
    return uploads


def _name(upload):
    return os.path.basename(upload.filename or "") or "upload"


async def _decode(upload, size, limits, gradcam):
    """`(name, model pixels, display pixels or None)` of one upload, decoded off the event loop."""
    return await asyncio.to_thread(_decode_now, upload.file, _name(upload), size, limits, gradcam)


def _decode_now(file, name, size, limits, gradcam):
    from PIL import Image

    from kflowers.data.images import UnreadableImage
    from kflowers.data.images import read_image
    from kflowers.inference.predict import prepare_image

    try:
        file.seek(0)
        with Image.open(file) as image:  # the header only: the size before any decoding
            width, height = image.size
    except Image.DecompressionBombError:  # Pillow's own refusal, far above ours
        raise RequestError(413, f"{name} declares too many pixels; at most {limits.max_pixels:,} pixels") from None
    except Exception:  # noqa: BLE001 - said below by read_image, with the reason
        width = height = 0
    if width * height > limits.max_pixels:
        raise RequestError(413, f"{name} is {width}x{height} pixels; at most {limits.max_pixels:,} pixels")
    try:
        pixels = prepare_image(file, size)
        display = _display_pixels(read_image(file, min_size=256)) if gradcam else None
    except UnreadableImage as error:
        status = 400 if "empty" in str(error) else 415
        raise RequestError(status, f"{name}: {error}") from None
    return name, pixels, display


def _display_pixels(photo, side=384):
    import albumentations as A

    return A.LongestMaxSize(side)(image=photo)["image"] if max(photo.shape[:2]) > side else photo


def _model_function(model, precision):
    """What the batcher runs on a batch: each photo's `(logits, Grad-CAM map)`, in one forward pass (for a
    linear head the map needs no gradient, so the pass runs without them)."""
    from kflowers.inference.explain import grad_cam
    from kflowers.inference.predict import inference_precision
    from kflowers.models.parts import model_parts

    linear = model_parts(model).linear_head

    def run(pixels):
        with _no_grad() if linear else contextlib.nullcontext(), inference_precision(precision):
            maps, logits = grad_cam(model, pixels)
        return list(zip(logits, maps))

    return run


def _no_grad():
    import keras

    if keras.backend.backend() != "torch":
        return contextlib.nullcontext()
    import torch

    return torch.no_grad()


def _predictions(decoded, answers, names, top, gradcam, activation):
    from kflowers.inference.predict import decode_predictions

    results = []
    for (name, _, display), (logits, heatmap) in zip(decoded, answers):
        ranked = decode_predictions(np.asarray(logits)[None], names, top, activation)[0]
        result = {"image": name, "top": [{"class": c, "probability": round(p, 6)} for c, p in ranked]}
        if gradcam:
            result["gradcam"] = _png_data_url(display, heatmap)
        results.append(result)
    return results


def _png_data_url(photo, heatmap):
    from PIL import Image

    from kflowers.inference.explain import overlay

    buffer = io.BytesIO()
    Image.fromarray(overlay(photo, heatmap)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _page():
    from importlib.resources import files

    return files("kflowers.inference").joinpath("page.html").read_text(encoding="utf-8")


def serve(model_path, host="127.0.0.1", port=8000, limits=None, precision="float32", quiet=False):
    """Serve the model at `model_path` until Ctrl-C or SIGTERM; return the exit status (0).

    The socket is bound before the model loads, so a port in use is one
    line at once. On Ctrl-C or SIGTERM uvicorn stops taking connections,
    answers the requests in flight (up to 10 s), and the batcher stops.

    Raises:
        KflowersError: the serve extra is missing, or the address can't be bound.
    """
    check_serve_installed()
    import uvicorn

    from kflowers.models.saving import load_model

    sock = _bind(host, port)
    model = load_model(model_path)
    app = create_app(model, model_path, limits, precision)
    bound = sock.getsockname()[1]
    url = f"http://{host if ':' not in host else f'[{host}]'}:{bound}"
    if not _loopback(host):
        log.warning("serving on %s: anyone who can reach this machine can use the model", host)
    config = uvicorn.Config(
        app, log_level="warning" if quiet else "info", timeout_graceful_shutdown=10, lifespan="on", access_log=not quiet
    )
    server = _server_class()(config, f"serving {model_path} at {url} (Ctrl-C to stop)")
    server.run(sockets=[sock])
    return 0


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, saying where it listens once it does, and ending quietly on Ctrl-C and SIGTERM
        (uvicorn re-raises the signal after its graceful shutdown: the process would end by it, not with 0)."""

        def __init__(self, config, ready_line):
            super().__init__(config)
            self.ready_line = ready_line

        async def startup(self, sockets=None):
            await super().startup(sockets)
            if self.started:
                print(self.ready_line, flush=True)

        @contextlib.contextmanager
        def capture_signals(self):
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            handled = (signal.SIGINT, signal.SIGTERM)
            original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

    return Server


def _bind(host, port):
    """A listening socket on `host:port` (`port` 0: any free one), or one line saying why not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise KflowersError(
            f"can't serve on {host}:{port} ({error.strerror}): choose another --port or --host"
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _loopback(host):
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
