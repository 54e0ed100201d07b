"""Where the MedSAM-Agent policy's text comes from: a local Qwen3-VL checkpoint (transformers, in process) or
an OpenAI-compatible chat-completions server (vLLM, SGLang).

Both take the conversation of ``mllm_prompt.build_messages`` and return the model's raw answer, decoded
greedily with at most ``MAX_NEW_TOKENS`` new tokens. Failures raise ``BackendError`` with a message naming
the checkpoint or server and what to do; the policy turns that into a pause, never a crash.
"""

from __future__ import annotations

import base64
import io
import json
import os
import http.client
import socket
import threading
import time
import urllib.parse
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from .base import PolicyError
from .mllm_prompt import MAX_NEW_TOKENS

GIB = 1024**3
QWEN3_VL_MODEL_TYPE = "qwen3_vl"


class BackendError(PolicyError):
    """The model could not be loaded or could not answer; the message says why."""


# -- local checkpoint ---------------------------------------------------------------------------------------
def read_checkpoint_config(path: str | os.PathLike) -> dict:
    """``config.json`` of a Qwen3-VL checkpoint directory, after checking that it is one."""
    directory = Path(path).expanduser()
    if not directory.exists():
        raise BackendError(f"policy checkpoint not found: {directory} does not exist")
    if not directory.is_dir():
        raise BackendError(f"policy checkpoint must be a directory (config.json, *.safetensors, tokenizer and "
                           f"processor files); {directory} is a file")
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise BackendError(f"{directory} holds no config.json: not a transformers checkpoint directory")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise BackendError(f"cannot read {config_path}: {error}") from None
    model_type = config.get("model_type")
    if model_type != QWEN3_VL_MODEL_TYPE:
        raise BackendError(f"{directory} holds a {model_type!r} checkpoint; the MedSAM-Agent policy is a Qwen3-VL "
                           f"model (config.json model_type {QWEN3_VL_MODEL_TYPE!r})")
    if not weight_files(directory):
        raise BackendError(f"{directory} holds no *.safetensors weights")
    return config


def weight_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.safetensors"))


def available_memory(device: str) -> int:
    """Free bytes on ``device``: GPU memory for ``cuda``, otherwise the system's available RAM."""
    if device.startswith("cuda"):
        import torch

        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62  # unknown: do not refuse


def memory_needed(directory: Path, bytes_per_parameter: int = 2, stored_bytes: int = 2) -> int:
    """Weights as loaded plus working room (activations of a few 512x512 images and 128 new tokens)."""
    weights = sum(f.stat().st_size for f in weight_files(directory)) * bytes_per_parameter // stored_bytes
    return int(weights * 1.1) + GIB // 2


class TransformersBackend:
    """A local Qwen3-VL checkpoint run with ``Qwen3VLForConditionalGeneration`` and ``AutoProcessor``."""

    def __init__(self, model_dir: str | os.PathLike, device: Optional[str] = None, dtype: Optional[str] = None):
        self.directory = Path(model_dir).expanduser()
        self.config = read_checkpoint_config(self.directory)
        try:
            import torch
            from transformers import AutoProcessor, Qwen3VLForConditionalGeneration
        except ImportError as error:
            raise BackendError(f"the MLLM policy needs transformers with Qwen3-VL support "
                               f"(pip install 'medsam-agent[mllm]'): {error}") from None
        self._torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendError(f"device {self.device!r} asked for, but no CUDA GPU is available")
        if dtype is None:  # BF16 as released on a GPU; float32 on a CPU, where BF16 matmuls are mostly emulated
            dtype = "float32" if self.device == "cpu" else (
                "bfloat16" if torch.cuda.is_bf16_supported() else "float16")
        self.dtype = getattr(torch, dtype, None)
        if not isinstance(self.dtype, torch.dtype):
            raise BackendError(f"unknown dtype {dtype!r}; use bfloat16, float16 or float32")
        if self.device == "cpu":
            warnings.warn("no GPU: the MLLM policy runs on the CPU, which is very slow for the 8B checkpoints "
                          "(minutes per action); use a GPU or a served endpoint (--endpoint)", stacklevel=3)
        stored = str(self.config.get("dtype") or self.config.get("torch_dtype") or "bfloat16")
        stored_bytes = 4 if "32" in stored else 2
        needed = memory_needed(self.directory, self.dtype.itemsize, stored_bytes)
        free = available_memory(self.device)
        if needed > free:
            where = "GPU memory" if self.device.startswith("cuda") else "RAM"
            raise BackendError(
                f"{self.directory.name} needs about {needed / GIB:.1f} GiB of {where} but only {free / GIB:.1f} GiB "
                f"is free on {self.device}; use a larger GPU, or serve the checkpoint (vLLM/SGLang) and pass --endpoint"
            )
        try:
            self.processor = AutoProcessor.from_pretrained(self.directory)
            model = Qwen3VLForConditionalGeneration.from_pretrained(self.directory, dtype=self.dtype)
            self.model = model.to(self.device).eval()
        except Exception as error:  # transformers raises many kinds; one clear line for the user
            raise BackendError(f"cannot load the Qwen3-VL checkpoint {self.directory}: "
                               f"{str(error).splitlines()[0] if str(error) else type(error).__name__}") from None
        self.generation = self._generation_config()
        self.model.generation_config = self.generation  # so generate() merges no sampling defaults back in
        self.label = self.directory.name

    def _generation_config(self):
        """The checkpoint's generation config (its end-of-turn tokens), made greedy and capped at 128 tokens."""
        config = self.model.generation_config
        config = config.__class__.from_dict(config.to_dict())
        config.do_sample = False
        config.num_beams = 1
        config.temperature = None
        config.top_p = None
        config.top_k = None
        config.max_new_tokens = MAX_NEW_TOKENS
        tokenizer = self.processor.tokenizer
        if config.eos_token_id is None:
            config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        if config.pad_token_id is None:
            config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else config.eos_token_id
        return config

    def generate(self, messages: Sequence[dict]) -> str:
        from PIL import Image

        images = []
        chat = []
        for message in messages:
            content = message["content"]
            if isinstance(content, str):
                chat.append({"role": message["role"], "content": content})
                continue
            parts = []
            for part in content:
                if part["type"] == "image":
                    images.append(Image.fromarray(part["image"]))
                    parts.append({"type": "image"})
                else:
                    parts.append({"type": "text", "text": part["text"]})
            chat.append({"role": message["role"], "content": parts})
        torch = self._torch
        try:
            prompt = self.processor.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
            inputs = self.processor(text=[prompt], images=images or None, return_tensors="pt").to(self.device)
            with torch.inference_mode():
                output = self.model.generate(**inputs, generation_config=self.generation)
            new_tokens = output[:, inputs["input_ids"].shape[1] :]
            return self.processor.batch_decode(new_tokens, skip_special_tokens=True)[0]
        except Exception as error:  # out of memory, a processor mismatch, ...: pause, do not crash the session
            raise BackendError(f"the policy model failed to answer ({type(error).__name__}: "
                               f"{str(error).splitlines()[0] if str(error) else 'no message'})") from None


# -- served endpoint ----------------------------------------------------------------------------------------
def chat_completions_url(base_url: str) -> str:
    """``http://host:8000``, ``.../v1`` or the full ``.../v1/chat/completions`` -> the chat-completions URL."""
    url = base_url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise BackendError(f"endpoint must be an http(s) URL such as http://127.0.0.1:8000/v1, got {base_url!r}")
    if url.endswith("/chat/completions"):
        return url
    if url.endswith("/v1"):
        return url + "/chat/completions"
    return url + "/v1/chat/completions"


def png_data_url(image: np.ndarray) -> str:
    """An image inline as ``data:image/png;base64,...`` (lossless, so the server sees our exact pixels)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def openai_messages(messages: Sequence[dict]) -> list[dict]:
    """The conversation in the OpenAI chat format: images as ``image_url`` parts with data URLs."""
    out = []
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            out.append({"role": message["role"], "content": content})
            continue
        parts: list[dict[str, Any]] = []
        for part in content:
            if part["type"] == "image":
                parts.append({"type": "image_url", "image_url": {"url": png_data_url(part["image"])}})
            else:
                parts.append({"type": "text", "text": part["text"]})
        out.append({"role": message["role"], "content": parts})
    return out


class EndpointBackend:
    """An OpenAI-compatible chat-completions server, called with the standard library's ``http.client``.

    ``timeout`` is one deadline per answer: connecting plus the whole response, retries included. Transport
    failures (refused, dropped, HTTP 5xx) are tried once more while time is left; then ``BackendError``.
    Proxy variables (HTTP_PROXY...) are not used: the server is expected on the local network.
    """

    def __init__(self, base_url: str, model_name: Optional[str] = None, api_key: Optional[str] = None,
                 timeout: float = 120.0, retries: int = 1):
        self.url = chat_completions_url(base_url)
        self.models_url = self.url[: -len("/chat/completions")] + "/models"
        self.model_name = model_name
        self.api_key = api_key
        self.timeout = float(timeout)
        if not 0 < self.timeout < float("inf"):
            raise BackendError(f"the endpoint timeout must be a positive number of seconds, got {timeout!r}")
        self.retries = int(retries)
        self.label = model_name or self.url

    def generate(self, messages: Sequence[dict]) -> str:
        payload = {
            "model": self._model(),
            "messages": openai_messages(messages),
            "max_tokens": MAX_NEW_TOKENS,
            "temperature": 0.0,
            "top_p": 1.0,
            "n": 1,
            "stream": False,
        }
        answer = self._request(self.url, payload)
        try:
            message = answer["choices"][0]["message"]
        except (KeyError, IndexError, TypeError):
            raise BackendError(f"the policy server at {self.url} sent no choices[0].message: "
                               f"{_snippet(json.dumps(answer))}") from None
        text = message.get("content") or ""
        if isinstance(text, list):  # some servers answer with content parts
            text = "".join(part.get("text", "") for part in text if isinstance(part, dict))
        calls = message.get("tool_calls") or []
        if not text.strip() and calls and isinstance(calls[0], dict):  # a server's tool parser took the call
            function = calls[0].get("function") or {}
            arguments = function.get("arguments", {})
            if isinstance(arguments, str):
                try:
                    arguments = json.loads(arguments) if arguments.strip() else {}
                except json.JSONDecodeError:
                    pass
            text = "<tool_call>\n" + json.dumps({"name": function.get("name"), "arguments": arguments}) + "\n</tool_call>"
        return text

    def _model(self) -> str:
        """The served model's name: as given, or the only one the server lists."""
        if self.model_name:
            return self.model_name
        listing = self._request(self.models_url, None)
        entries = listing.get("data") if isinstance(listing, dict) else None
        names = [entry.get("id") for entry in entries or [] if isinstance(entry, dict)]
        if len(names) != 1:
            raise BackendError(f"the server at {self.models_url} serves {len(names)} models ({', '.join(map(str, names))}); "
                               "name one with --model-name")
        self.model_name = self.label = str(names[0])
        return self.model_name

    def _request(self, url: str, payload: Optional[dict]) -> dict:
        """One answer from the server, within ``timeout`` seconds in all: connecting, sending, waiting and
        reading the whole body, retries included (a server that trickles bytes cannot hold a step longer)."""
        headers = {"Accept": "application/json"}
        data = None
        if payload is not None:
            data = json.dumps(payload).encode("utf-8")
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        deadline = time.monotonic() + self.timeout
        attempts = 1 + max(self.retries, 0)
        problem, tried = "", 0
        for _attempt in range(attempts):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            tried += 1
            try:
                status, reason, body = _http_exchange(url, data, headers, left)
            except _DeadlinePassed:
                problem = (f"the policy server at {url} did not answer within {self.timeout:g} s (--timeout covers "
                           "connecting and the whole answer)")
                break  # the time is spent: no retry
            except ConnectionRefusedError:
                problem = f"cannot reach the policy server at {url}: connection refused (is vLLM/SGLang running?)"
                continue
            except socket.gaierror as error:
                problem = f"cannot reach the policy server at {url}: unknown host ({error.strerror or error})"
                break
            except (OSError, http.client.HTTPException) as error:
                problem = f"lost the connection to the policy server at {url}: {error or type(error).__name__}"
                continue
            if status >= 400:
                detail = _snippet(body.decode("utf-8", "replace"))
                problem = f"the policy server at {url} answered HTTP {status} {reason}: {detail}"
                if status == 404:
                    problem += " (check the endpoint URL and --model-name)"
                if status in (401, 403):
                    problem += " (check --api-key)"
                if status < 500:
                    break  # the same request will fail the same way
                continue
            try:
                answer = json.loads(body.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise BackendError(f"the policy server at {url} did not answer JSON: "
                                   f"{_snippet(body.decode('utf-8', 'replace'))}") from None
            if not isinstance(answer, dict):
                raise BackendError(f"the policy server at {url} answered a JSON {type(answer).__name__}, not an "
                                   f"object: {_snippet(body.decode('utf-8', 'replace'))}")
            return answer
        if not problem:
            problem = f"the policy server at {url} did not answer within {self.timeout:g} s"
        raise BackendError(problem + (f" (tried {tried} times)" if tried > 1 else ""))


class _DeadlinePassed(Exception):
    """The whole exchange did not finish in time."""


def _http_exchange(url: str, data: Optional[bytes], headers: dict, seconds: float) -> tuple[int, str, bytes]:
    """POST (or GET without ``data``) and read the whole answer: (status, reason, body), all within
    ``seconds``. Each socket operation times out at ``seconds`` and a watchdog shuts the socket down when the
    total runs out, so neither a silent nor a trickling server can hold the caller longer."""
    parts = urllib.parse.urlsplit(url)
    connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = connection_class(parts.hostname, parts.port, timeout=seconds)
    expired = threading.Event()
    opened: list[socket.socket] = []  # the socket itself: http.client drops its own reference after the headers

    def expire() -> None:
        expired.set()
        for sock in opened:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    watchdog = threading.Timer(seconds, expire)
    watchdog.daemon = True
    watchdog.start()
    try:
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        connection.connect()
        opened.append(connection.sock)
        if expired.is_set():  # the deadline passed while connecting
            raise _DeadlinePassed
        connection.request("POST" if data is not None else "GET", path, body=data, headers=headers)
        response = connection.getresponse()
        body = response.read()
        if expired.is_set():
            raise _DeadlinePassed
        return response.status, response.reason, body
    except (TimeoutError, socket.timeout):
        raise _DeadlinePassed from None
    except (OSError, http.client.HTTPException):
        if expired.is_set():
            raise _DeadlinePassed from None
        raise
    finally:
        watchdog.cancel()
        connection.close()


def _snippet(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "..."
