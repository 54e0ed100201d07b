"""The Gradio page: forwards clicks and buttons to the browser session's ``Workspace`` and shows the result.

Every handler returns the same views (picture, proposal, message, step table, downloads); an error becomes the
page's message (the traceback goes to the server's log only). Element ids (``#picture``, ``#status``, ...)
are what the browser test looks for.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported: no telemetry, no version check

import gradio as gr  # noqa: E402

from .. import registry  # noqa: E402
from ..images import ImageLoadError  # noqa: E402
from ..manifest import Case, bundled_manifest  # noqa: E402
from ..policies.base import PolicyError  # noqa: E402
from ..tools.base import ToolError  # noqa: E402
from .picture import UPLOAD_SUFFIXES, WINDOWS, Volume, from_case, from_upload  # noqa: E402
from .workspace import PROMPT_MODES, TABLE_HEADERS, AppError, Choices, Engine, Workspace  # noqa: E402

log = logging.getLogger("medsam-agent.app")
EXPECTED = (AppError, ImageLoadError, ToolError, PolicyError, ValueError, FileNotFoundError)
POLICIES = ("builtin", "learned", "oracle", "mllm")  # the ones that run here (mllm: on a served model)
CSS = "#picture img {cursor: crosshair}"


@dataclass
class AppConfig:
    engine: Engine
    out: Path
    cases: dict[str, Case]
    first_case: str


def build(config: AppConfig) -> gr.Blocks:
    """The page; ``launch`` it (see ``commands.app``)."""
    case_ids = list(config.cases)

    def workspace(ws: Optional[Workspace]) -> Workspace:
        return ws if ws is not None else Workspace(config.engine, config.out)

    def views(ws: Workspace) -> list[Any]:
        picture = ws.picture
        volume = isinstance(picture, Volume)
        mask_file, log_file = ws.downloads
        return [
            ws,
            ws.picture_image() if picture is not None else None,
            ws.proposal_text(),
            ws.message,
            ws.rows(),
            gr.update(visible=volume, maximum=max((picture.slices - 1) if picture else 0, 1), value=ws.index),
            gr.update(visible=volume, value=picture.window if volume else "auto"),
            gr.update(value=str(mask_file) if mask_file else None, interactive=mask_file is not None),
            gr.update(value=str(log_file) if log_file else None, interactive=log_file is not None),
            gr.update(visible=volume),  # Propagate
        ]

    def act(ws: Optional[Workspace], action: Callable[[Workspace], None]) -> list[Any]:
        """Run ``action`` on the browser session's workspace; any failure becomes the page's message."""
        ws = workspace(ws)
        try:
            action(ws)
        except EXPECTED as error:
            ws.message = f"⚠ {error}"
        except Exception as error:  # noqa: BLE001 - the page shows a message, the log keeps the traceback
            log.exception("app action failed")
            ws.message = f"⚠ unexpected error ({type(error).__name__}: {error}); details are in the server log"
        try:
            return views(ws)
        except Exception as error:  # noqa: BLE001
            log.exception("drawing the page failed")
            ws.message = f"⚠ cannot show the result ({type(error).__name__}: {error})"
            return [ws, None, "", ws.message, [], *[gr.update()] * 5]

    def button(method: Callable[[Workspace], None]) -> Callable[[Optional[Workspace]], list[Any]]:
        return lambda ws: act(ws, method)

    def choices(tool: str, policy: str, endpoint: str, model_name: str, max_actions: float) -> Choices:
        return Choices(tool, policy, endpoint or "", model_name or "", int(max_actions))

    def progress_of(progress: gr.Progress) -> Callable[[float, str], None]:
        return lambda fraction, desc: progress(fraction, desc=desc)

    with gr.Blocks(title="MedSAM-Agent", analytics_enabled=False) as page:
        state = gr.State(None)
        gr.Markdown("## MedSAM-Agent: the agent proposes, you decide\nClick on the target (or draw a box), press "
                    "**Start**; the agent's proposal is drawn in amber. Accept, correct or reject it; Finish "
                    "accepts the mask. Nothing leaves this machine.")
        with gr.Row():
            with gr.Column(scale=1, min_width=280):
                case = gr.Dropdown(case_ids, value=config.first_case, label="Bundled case", elem_id="case")
                upload = gr.File(label="…or upload a 2D image or a volume", file_types=list(UPLOAD_SUFFIXES),
                                 elem_id="upload")
                window = gr.Dropdown(list(WINDOWS), value="auto", label="Volume intensities (CT window or "
                                     "percentiles)", visible=False, elem_id="window")
                slider = gr.Slider(0, 1, value=0, step=1, label="Slice", visible=False, elem_id="slice")
                target = gr.Textbox(label="Target", placeholder="e.g. liver in abdominal CT (default: the case's)",
                                    elem_id="target")
                mode = gr.Radio(list(PROMPT_MODES), value=PROMPT_MODES[0], label="Your prompt",
                                elem_id="mode")
                tool = gr.Dropdown(config.engine.names, value=config.engine.names[0], label="Tool", elem_id="tool")
                policy = gr.Dropdown(list(POLICIES), value=registry.DEFAULT_POLICY, label="Policy",
                                     elem_id="policy")
                endpoint = gr.Textbox(label="MLLM endpoint URL", placeholder="http://127.0.0.1:8000/v1",
                                      visible=False)
                model_name = gr.Textbox(label="MLLM model name", visible=False)
                max_actions = gr.Number(5, label="Action limit", precision=0, minimum=1, maximum=20)
            with gr.Column(scale=2):
                picture = gr.Image(label="Image", type="pil", format="png", interactive=False,
                                   show_label=False, elem_id="picture", buttons=[])
                proposal = gr.Markdown(elem_id="proposal")
                status = gr.Markdown(elem_id="status")
                with gr.Row():
                    buttons = {name: gr.Button(name, variant="primary" if name in ("Start", "Accept") else
                                               "secondary", elem_id=name.lower(), min_width=80,
                                               visible=name != "Propagate")
                               for name in ("Start", "Accept", "Override", "Flip", "Reject", "Continue", "Undo",
                                            "Finish", "Propagate")}
                steps = gr.Dataframe(headers=TABLE_HEADERS, value=[], interactive=False, label="Steps",
                                     elem_id="steps", wrap=True)
                with gr.Row():
                    mask_download = gr.DownloadButton("Download mask", interactive=False, elem_id="download-mask")
                    log_download = gr.DownloadButton("Download trajectory log", interactive=False,
                                                     elem_id="download-log")

        outputs = [state, picture, proposal, status, steps, slider, window, mask_download, log_download,
                   buttons["Propagate"]]
        settings = [tool, policy, endpoint, model_name, max_actions]

        def open_case(ws: Optional[Workspace], case_id: str) -> list[Any]:
            def load(w: Workspace) -> None:
                if case_id not in config.cases:
                    raise AppError(f"no bundled case {case_id!r}")
                w.open(from_case(config.cases[case_id]))

            return act(ws, load)

        def open_upload(ws: Optional[Workspace], path: Optional[str], window_name: str) -> list[Any]:
            window_name = window_name if window_name in WINDOWS else "auto"
            return act(ws, lambda w: w.open(from_upload(path, window_name)) if path else None)

        def click(ws: Optional[Workspace], prompt_mode: str, evt: gr.SelectData) -> list[Any]:
            x, y = evt.index
            return act(ws, lambda w: w.click(float(x), float(y), prompt_mode))

        def start(ws: Optional[Workspace], target_text: str, tool_name: str, policy_name: str, url: str,
                  name: str, limit: float, progress=gr.Progress()) -> list[Any]:
            picked = choices(tool_name, policy_name, url, name, limit)
            return act(ws, lambda w: w.start(target_text or "", picked, progress_of(progress)))

        def continue_(ws: Optional[Workspace], progress=gr.Progress()) -> list[Any]:
            return act(ws, lambda w: w.continue_(progress_of(progress)))

        def propagate(ws: Optional[Workspace], progress=gr.Progress()) -> list[Any]:
            return act(ws, lambda w: w.propagate(progress_of(progress)))

        page.load(open_case, [state, case], outputs)
        case.input(open_case, [state, case], outputs)
        upload.upload(open_upload, [state, upload, window], outputs)
        slider.release(lambda ws, index: act(ws, lambda w: w.set_slice(int(index))), [state, slider], outputs)
        window.input(lambda ws, name: act(ws, lambda w: w.set_window(name)), [state, window], outputs)
        picture.select(click, [state, mode], outputs)
        policy.change(lambda name: [gr.update(visible=name == "mllm")] * 2, policy, [endpoint, model_name])
        buttons["Start"].click(start, [state, target, *settings], outputs)
        buttons["Continue"].click(continue_, [state], outputs)
        buttons["Propagate"].click(propagate, [state], outputs)
        for name, method in (("Accept", Workspace.accept), ("Override", Workspace.override),
                             ("Flip", Workspace.flip), ("Reject", Workspace.reject), ("Undo", Workspace.undo),
                             ("Finish", Workspace.finish)):
            buttons[name].click(button(method), [state], outputs)
    return page


def default_config(engine: Engine, out: Path, first_case: Optional[str] = None) -> AppConfig:
    cases = {case.id: case for case in bundled_manifest()}
    first = first_case or next(iter(cases))
    if first not in cases:
        raise AppError(f"no bundled case {first!r}; choose one of: {', '.join(cases)}")
    return AppConfig(engine, Path(out), cases, first)
