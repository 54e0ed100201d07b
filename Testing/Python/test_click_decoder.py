"""The click-trained LiteMedSAM decoder (learning/click_decoder.py) and the tool's ``clicks="decoder"`` mode:
training runs and writes loadable weights, bad weights are refused with a clear message, and the tool follows
the protocol's update rule (newest click + previous logits; rebuilt from the prompts without a previous mask)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from MedSAMAgentLib.actions import Point
from MedSAMAgentLib.learning.click_decoder import TrainSettings, click_step, init_click_network, train
from MedSAMAgentLib.learning.embeddings import EmbeddingCache, allows_derived_weights, training_cases
from MedSAMAgentLib.manifest import bundled_manifest
from MedSAMAgentLib.policies.oracle import corrective_click, gt_box
from MedSAMAgentLib.tools.base import ToolError
from MedSAMAgentLib.tools.litemedsam import CLICK_DECODER, CLICK_DECODER_SHA256, LiteMedSAM

CASES = ("medscribble/HipXRay/image_054_axis0_midslice", "sam-med2d/amos_0006_90_spleen_000")


@pytest.fixture(scope="module")
def tiny(litemedsam, tmp_path_factory):
    """Two bundled cases, their embeddings cached by the real encoder, and weights trained for 3 steps."""
    cases, skipped = training_cases([c for c in bundled_manifest() if c.id in CASES])
    assert [c.id for c in cases] == list(CASES) and not skipped
    cache = EmbeddingCache(tmp_path_factory.mktemp("emb"), tool=litemedsam)
    assert cache.build(cases, progress=False) == 2 and cache.build(cases, progress=False) == 0
    out = tmp_path_factory.mktemp("train")
    settings = TrainSettings(steps=3, batch=1, clicks=1, warmup_clicks=1, lr_warmup=1)
    info = train(cases, out, settings, cache, net=litemedsam.net, log=None)
    return cases, cache, out, info


def test_embeddings_cases_and_licences(tiny):
    cases, cache, _, _ = tiny
    assert all(c.derived_weights_ok and c.evaluated for c in cases)  # CC BY 4.0 rows
    emb = cache.get(cases[0])
    assert emb.shape == (1, 256, 64, 64) and emb.dtype == np.float32 and np.isfinite(emb).all()
    assert not allows_derived_weights("CC BY-NC-SA 4.0") and not allows_derived_weights("GPL-3.0")
    assert not allows_derived_weights("BSD-3 (repository); image provenance undocumented")


def test_training_writes_weights_that_load(tiny, litemedsam):
    cases, _, out, info = tiny
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 3 and all(np.isfinite(r["loss"]) for r in log)
    assert info["rows"] == sorted(CASES) and len(info["sha256"]) == 64
    from MedSAMAgentLib.learning.click_decoder import load_click_decoder

    _, md, local = load_click_decoder(litemedsam.net, out / "click_decoder.pt", info["sha256"])
    assert local
    last = md.output_hypernetworks_mlps[0].layers[-1].weight
    assert float(last.detach().abs().max()) > 0  # training moved the layer that starts at zero


def test_bad_weights_are_refused(tiny, litemedsam, tmp_path):
    from MedSAMAgentLib.learning.click_decoder import load_click_decoder

    _, _, out, info = tiny
    with pytest.raises(ToolError, match="SHA-256"):
        load_click_decoder(litemedsam.net, out / "click_decoder.pt", "0" * 64)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not weights at all")
    with pytest.raises(ToolError, match="click decoder"):
        load_click_decoder(litemedsam.net, junk)
    with pytest.raises(ToolError, match="not found"):
        load_click_decoder(litemedsam.net, tmp_path / "missing.pt")
    with pytest.raises(ToolError, match="clicks option"):
        LiteMedSAM(device="cpu", clicks="magic")


@pytest.mark.skipif(CLICK_DECODER.is_file(), reason="a click decoder is shipped")
def test_decoder_mode_without_shipped_weights_says_so(tiny, bundled):
    tool = LiteMedSAM(device="cpu", clicks="decoder")
    task = bundled[CASES[1]]
    tool.set_image(task.image)
    box = gt_box(task.ground_truth)
    first = tool.predict([box], None)  # the box step needs no click decoder
    with pytest.raises(ToolError, match="no click decoder is shipped"):
        tool.predict([box, Point(box.x1 + 1, box.y1 + 1, False)], first)


def test_untrained_click_step_is_the_identity(litemedsam):
    import torch

    pe, md = init_click_network(litemedsam.net)
    previous = torch.randn(1, 1, 256, 256)
    with torch.no_grad():
        out, _ = click_step(pe, md, torch.randn(1, 256, 64, 64), torch.tensor([[[40.0, 50.0]]]),
                            torch.tensor([[1]]), previous)
    assert torch.equal(out, previous.clamp(-20, 20))


@pytest.mark.skipif(not CLICK_DECODER.is_file(), reason="no click decoder shipped")
def test_shipped_weights_pass_their_check(litemedsam):
    from MedSAMAgentLib.learning.click_decoder import load_click_decoder
    from MedSAMAgentLib.tools.litemedsam import file_sha256

    assert file_sha256(CLICK_DECODER) == CLICK_DECODER_SHA256
    load_click_decoder(litemedsam.net, CLICK_DECODER, CLICK_DECODER_SHA256)


def test_update_rule_newest_click_and_previous_logits(tiny, bundled):
    """Chained (newest click + previous logits) and rebuilt from the prompts (no previous) agree; a box
    gives LiteMedSAM's own box mask."""
    _, _, out, _ = tiny
    tool = LiteMedSAM(device="cpu", clicks="decoder", click_decoder=out / "click_decoder.pt")
    task = bundled[CASES[1]]
    gt = task.ground_truth
    tool.set_image(task.image)
    box = gt_box(gt)
    actions = [box]
    first = tool.predict(actions, None)
    reference = LiteMedSAM(device="cpu", clicks="geodesic", zoom="off")  # the decoder path does not zoom
    reference.set_image(task.image)
    assert np.array_equal(first.mask, reference.predict(actions, None).mask)
    previous = first
    for _ in range(2):
        click = corrective_click(previous.mask, gt) or Point(int(gt.nonzero()[1][0]), int(gt.nonzero()[0][0]), True)
        actions.append(click)
        chained = tool.predict(actions, previous)
        low, _ = tool._click_step(click, previous.logits)
        assert np.array_equal(chained.logits, low)  # exactly the newest click on the previous logits
        previous = chained
    rebuilt = tool.predict(actions, None)
    assert np.allclose(rebuilt.logits, previous.logits, atol=1e-4)
