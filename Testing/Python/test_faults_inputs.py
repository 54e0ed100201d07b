"""Fault suite, part 1: property-based tests (hypothesis) of the input boundary and the log readers.

Images (non-finite and constant pixels), prompts (finite, inside, a positive click ends in the mask, with the
real LiteMedSAM), manifest rows (every field), log lines (torn, binary, non-object, unknown types) and
command-line options. Examples per test are capped (``FAULT_SETTINGS``) to keep the suite's CI time small;
``derandomize`` makes every CI run try the same inputs."""

from __future__ import annotations

import json
import math
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from MedSAMAgentLib import cli
from MedSAMAgentLib.actions import Box, Point
from MedSAMAgentLib.images import ImageLoadError, NonFiniteWarning, check_contrast, load_array, to_rgb
from MedSAMAgentLib.manifest import BUNDLED_DATA, read_manifest
from MedSAMAgentLib.tools.guard import check_inside

FAULT_SETTINGS = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
SLOW_SETTINGS = settings(FAULT_SETTINGS, max_examples=12)  # each example runs the real network
DEMO_IMAGE = BUNDLED_DATA / "medscribble/BTCV/0763890-Image_axis1_maxslice/img.npy"


# -- images -------------------------------------------------------------------------------------------------
pixels = st.floats(width=32, min_value=-5e3, max_value=5e3) | st.sampled_from(
    [math.nan, math.inf, -math.inf])


@FAULT_SETTINGS
@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=2, min_side=2, max_side=24), elements=pixels),
       st.sampled_from([None, "CT"]))
def test_any_float_image_becomes_a_finite_engine_image_or_a_message(array, modality):
    """A file with NaN/inf pixels loads as if NaN and -inf were the finite minimum and +inf the maximum (with
    a warning naming the file); no finite pixel, or a constant image, is refused with a message."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "image.npy"
        np.save(path, array)
        finite = np.isfinite(array)
        expected = None
        if finite.any():  # the documented repair, spelled out independently of the code under test
            low, high = array[finite].min(), array[finite].max()
            expected = np.where(np.isposinf(array), high, np.where(finite, array, low)).astype(np.float32)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                loaded, _ = load_array(path)
                image = check_contrast(to_rgb(loaded, modality), path)
            except ImageLoadError as error:
                assert str(path) in str(error)
                if expected is None:
                    assert "no pixel is a finite number" in str(error)
                else:
                    assert "constant" in str(error) and np.ptp(to_rgb(expected, modality)) == 0
                return
        assert image.dtype == np.uint8 and image.shape == (*array.shape, 3)
        assert np.array_equal(image, to_rgb(expected, modality))
        nonfinite = [w for w in caught if issubclass(w.category, NonFiniteWarning)]
        assert bool(nonfinite) == (not finite.all())
        if nonfinite:
            assert str(path) in str(nonfinite[0].message)


@pytest.mark.parametrize("name, array", [
    ("zeros", np.zeros((32, 32), np.float32)), ("constant", np.full((32, 32), 7, np.int16)),
    ("all NaN", np.full((32, 32), np.nan, np.float32)), ("empty", np.zeros((0, 32), np.float32)),
    ("complex", np.ones((8, 8), np.complex64)),
])
def test_images_with_nothing_to_segment_are_refused_in_one_line(tmp_path, capsys, name, array):
    path = tmp_path / "bad.npy"
    np.save(path, array)
    code = cli.main(["segment", str(path), "--box", "1", "1", "6", "6", "--out", str(tmp_path / "m.png")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and str(path) in err
    assert not (tmp_path / "m.png").exists()


def test_a_text_file_named_npy_is_named_as_such(tmp_path):
    path = tmp_path / "notes.npy"
    path.write_text("hello\n")
    with pytest.raises(ImageLoadError, match="not a NumPy .npy file"):
        load_array(path)


# -- prompts ------------------------------------------------------------------------------------------------
coordinate = st.floats(width=32, min_value=-50, max_value=300) | st.sampled_from(
    [math.nan, math.inf, -math.inf])


@FAULT_SETTINGS
@given(st.lists(coordinate, min_size=4, max_size=4), st.integers(2, 256), st.integers(2, 256))
def test_prompts_are_finite_and_inside_or_refused(values, height, width):
    """Every action is checked where it is made (finite), and against the image where it is used (inside)."""
    x1, y1, x2, y2 = values
    for make, coords in ((lambda: Box(x1, y1, x2, y2), values), (lambda: Point(x1, y1, True), values[:2])):
        if not all(math.isfinite(v) for v in coords):
            with pytest.raises(ValueError, match="finite"):
                make()
            continue
        action = make()
        xs, ys = coords[0::2], coords[1::2]
        inside = min(xs) >= 0 and max(xs) <= width - 1 and min(ys) >= 0 and max(ys) <= height - 1
        if inside:
            check_inside(action, height, width)
        else:
            with pytest.raises(ValueError, match=f"outside the {width}x{height} image"):
                check_inside(action, height, width)


@pytest.fixture(scope="module")
def guarded_tool():
    from MedSAMAgentLib.registry import make_tool

    return make_tool("litemedsam", device="cpu")


@pytest.fixture(scope="module")
def demo_image():
    from MedSAMAgentLib.images import load_image_2d

    return load_image_2d(DEMO_IMAGE, modality="CT")[0]


@SLOW_SETTINGS
@given(st.integers(0, 255), st.integers(0, 255), st.booleans())
def test_a_positive_click_always_ends_in_the_mask(guarded_tool, demo_image, x, y, after_box):
    """Alone or after a box, wherever it falls, the real tool's mask holds the clicked pixel."""
    guarded_tool.set_image(demo_image)
    actions = [Box(40, 40, 200, 200)] if after_box else []
    previous = guarded_tool.predict(actions, None) if actions else None
    actions.append(Point(x, y, True))
    prediction = guarded_tool.predict(actions, previous)
    assert prediction.mask.shape == demo_image.shape[:2] and prediction.mask[y, x]
    assert math.isfinite(prediction.score)


# -- manifests ----------------------------------------------------------------------------------------------
FIELDS = {  # field -> (valid values, invalid values)
    "id": (st.text(min_size=1, max_size=8).filter(str.strip), st.sampled_from(["", " ", 3, None, ["a"]])),
    "image": (st.just("x.npy"), st.sampled_from(["", 7, None, {"p": 1}])),
    "mask": (st.just("m.npy"), st.sampled_from(["", 0, None])),
    "dims": (st.sampled_from([2, 3]), st.sampled_from([4, 1, 0, "2", 2.5, True, None])),
    "mask_threshold": (st.none() | st.floats(-10, 10) | st.integers(-5, 5),
                       st.sampled_from(["high", True, [0.5], math.inf, {"t": 1}])),
    "label": (st.none() | st.integers(0, 20), st.sampled_from(["1", 1.5, False, [1]])),
    "slice": (st.none() | st.integers(0, 500), st.sampled_from([-1, "3", 2.0, True])),
    "expert_label": (st.booleans(), st.sampled_from(["yes", 1, None])),
    "target": (st.text(max_size=10), st.sampled_from([5, None, ["liver"]])),
    "modality": (st.sampled_from(["CT", "MR", ""]), st.sampled_from([1, None])),
}


@st.composite
def manifest_rows(draw):
    row, broken = {}, None
    for key, (good, bad) in FIELDS.items():
        required = key in ("id", "image", "mask")
        choice = draw(st.sampled_from(["good", "bad", "absent"] if not required else ["good", "bad", "absent"]))
        if choice == "good" or (choice == "bad" and broken is not None):
            row[key] = draw(good)
        elif choice == "bad":
            row[key], broken = draw(bad), key
        elif required and broken is None:
            broken = key  # a required key left out
        elif required:
            row[key] = draw(good)
    return row, broken


@FAULT_SETTINGS
@given(manifest_rows())
def test_every_manifest_field_is_checked_and_named(drawn):
    row, broken = drawn
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "manifest.jsonl"
        path.write_text("\n" + json.dumps(row) + "\n")
        if broken is None:
            (case,) = read_manifest(path)
            assert case.dims in (2, 3) and isinstance(case.id, str) and case.id.strip()
            assert case.mask_threshold is None or math.isfinite(case.mask_threshold)
            return
        with pytest.raises(ValueError) as raised:
            read_manifest(path)
        message = str(raised.value)
        assert message.startswith(f"{path}:2: ") and repr(broken) in message


@FAULT_SETTINGS
@given(st.binary(min_size=1, max_size=40).filter(lambda b: b"\n" not in b and b.strip()))
def test_a_manifest_line_that_is_not_a_json_object_is_named(raw):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "manifest.jsonl"
        path.write_bytes(raw + b"\n")
        try:
            json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            pass
        with pytest.raises(ValueError, match=f"{path}:1: "):
            read_manifest(path)


# -- log lines ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clean_log(guarded_tool, tmp_path_factory):
    """A real two-episode log (the real tool; the clinician's box, then stop), the second one accepted."""
    from MedSAMAgentLib.actions import Stop
    from MedSAMAgentLib.manifest import bundled_manifest, load_case
    from MedSAMAgentLib.policies.builtin import BuiltinPolicy
    from MedSAMAgentLib.policies.oracle import gt_box
    from MedSAMAgentLib.session import Session
    from MedSAMAgentLib.trajectory import TrajectoryWriter

    case = load_case(next(c for c in bundled_manifest() if c.id.startswith("medscribble/BTCV")))
    path = tmp_path_factory.mktemp("log") / "clean.jsonl"
    with TrajectoryWriter(path) as log:
        for accepted in (False, True):
            session = Session(guarded_tool, BuiltinPolicy(), case.image, target=case.case.target,
                              ground_truth=case.ground_truth, log=log, max_actions=3)
            session.place(gt_box(case.ground_truth), hint=True)
            session.place(Stop())
            session.finish(accepted=accepted, status="stopped")
    return path


junk_line = st.one_of(
    st.binary(min_size=1, max_size=60).map(lambda b: b.replace(b"\n", b"")),  # binary, torn or not UTF-8
    st.sampled_from([b"[1, 2, 3]", b"42", b'"text"', b"null", b"\xff\xfe{\"type\": \"step\"}", b'{"type": "st']),
    st.builds(lambda kind, eid: json.dumps({"type": kind, "episode_id": eid}).encode(),
              st.text(min_size=1, max_size=8).filter(lambda k: k not in ("episode", "step", "undo", "pause", "end")),
              st.just("no-such-episode")),
)


@FAULT_SETTINGS
@given(st.lists(st.tuples(st.integers(0, 1000), junk_line), min_size=1, max_size=4), st.booleans())
def test_log_readers_skip_and_name_what_they_cannot_read(clean_log, junk, torn_tail):
    """Junk lines anywhere (and a torn last line) are skipped with a warning naming file and line; every
    episode and step of the clean log is still read, and export still takes the accepted episode."""
    from MedSAMAgentLib.trajectories.export import ExportReport, load_export_episodes
    from MedSAMAgentLib.trajectories.stats import collect
    from MedSAMAgentLib.trajectory import read_episodes

    lines = clean_log.read_bytes().splitlines(keepends=True)
    for position, raw in sorted(junk, reverse=True):
        lines.insert(position % (len(lines) + 1), raw + b"\n")
    if torn_tail:
        lines.append(lines[-1][: len(lines[-1]) // 2])
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "damaged.jsonl"
        path.write_bytes(b"".join(lines))
        (Path(folder) / "clean.images").symlink_to(clean_log.parent / "clean.images")  # meta.image_path
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            episodes = read_episodes(path)
            stats = collect([path])
            report = ExportReport("llamafactory", Path(folder))
            exported = list(load_export_episodes([path], report))
        clean = read_episodes(clean_log)
        assert [e.episode_id for e in episodes] == [e.episode_id for e in clean]
        for got, want in zip(episodes, clean):
            assert [s.record for s in got.steps] == [s.record for s in want.steps] and not got.problems
        assert stats.episodes == 2 and [e.episode_id for e in exported] == [clean[1].episode_id]
        assert all(f"{path}:" in str(w.message) for w in caught if "skipped" in str(w.message))


def test_a_step_of_an_unknown_kind_spoils_only_its_episode(clean_log, tmp_path):
    from MedSAMAgentLib.trajectories.export import ExportReport, load_export_episodes
    from MedSAMAgentLib.trajectories.stats import collect
    from MedSAMAgentLib.trajectory import read_episodes

    path = tmp_path / "newer.jsonl"
    (tmp_path / "clean.images").symlink_to(clean_log.parent / "clean.images")
    text = clean_log.read_text().splitlines()
    second = read_episodes(clean_log)[1].episode_id
    changed = [line.replace('"type":"box"', '"type":"lasso"') if second in line else line for line in text]
    path.write_text("\n".join(changed) + "\n")
    with pytest.warns(UserWarning, match=rf"{path}:\d+: a step that cannot be read .*'lasso'"):
        episodes = read_episodes(path)
    assert episodes[1].problems and not episodes[0].problems
    with pytest.warns(UserWarning):
        assert collect([path]).episodes == 2
        report = ExportReport("llamafactory", tmp_path)
        assert list(load_export_episodes([path], report)) == []
    assert report.skipped == {"episodes not accepted": 1, "episodes with unreadable records (see the warnings)": 1}


# -- options ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, says", [
    (["demo", "--max-steps", "-1"], "--max-steps: expected a whole number 1 or more"),
    (["demo", "--timeout", "0"], "--timeout: expected a number in (0, inf)"),
    (["trajectories", "generate", "--manifest", "m", "--out", "o", "--stop-iou", "5"], "--stop-iou"),
    (["trajectories", "generate", "--manifest", "m", "--out", "o", "--tau", "nan"], "--tau"),
    (["trajectories", "generate", "--manifest", "m", "--out", "o", "--workers", "0"], "--workers"),
    (["trajectories", "export", "x", "--format", "verl", "--out", "o", "--min-iou", "2"], "--min-iou"),
    (["evaluate", "--manifest", "m", "--protocol", "clicks", "--out", "o", "--interactions", "0"], "--interactions"),
    (["segment", str(DEMO_IMAGE), "--box", "1", "1", "9", "9", "--out", "mask"], "ending in .png or .npy"),
    (["segment", str(DEMO_IMAGE), "--box", "nan", "10", "50", "50", "--out", "m.png"], "four finite numbers"),
    (["segment", str(DEMO_IMAGE), "--point", "3", "inf", "pos", "--out", "m.png"], "two finite numbers"),
])
def test_nonsense_options_are_refused_while_parsing(argv, says, capsys):
    with pytest.raises(SystemExit) as raised:
        cli.main(argv)
    assert raised.value.code == 2 and says in capsys.readouterr().err


@pytest.mark.parametrize("extra, says", [
    (["--tool-option", "foo=bar"], "the litemedsam tool has no option foo; it takes"),
    (["--slice", "0:3"], "is a 2D image (256, 256): --slice applies to volumes only"),
    (["--box", "10", "10", "300", "20"], "lies outside the 256x256 image"),
])
def test_option_checks_come_before_any_model_is_loaded(extra, says, tmp_path, capsys, monkeypatch):
    from MedSAMAgentLib import registry

    def refuse(*args, **kwargs):
        raise AssertionError("a tool was built before the options were checked")

    monkeypatch.setitem(registry.TOOLS, "litemedsam", refuse)
    out = tmp_path / "m.png"
    code = cli.main(["segment", str(DEMO_IMAGE), "--box", "1", "1", "9", "9", *extra, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and says in err and err.count("\n") == 1 and not out.exists()
