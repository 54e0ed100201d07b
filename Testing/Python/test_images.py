"""Loading 2D images and volumes, intensity presets, and the manifest format."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from MedSAMAgentLib.images import (CT_WINDOWS, ImageLoadError, largest_slice, load_array, load_image_2d,
                                   percentile_normalise, to_rgb, window_ct)
from MedSAMAgentLib.manifest import BUNDLED_DATA, SHARED_DATA, bundled_manifest, load_case, read_manifest


def test_2d_formats_load_as_engine_images(tmp_path, rng):
    grey = rng.integers(0, 256, (30, 40)).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.png")
    Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "c.jpg", quality=95)
    np.save(tmp_path / "f.npy", grey.astype(np.float32) / 255)
    for name in ("g.png", "c.jpg", "f.npy"):
        image, mapping = load_image_2d(tmp_path / name)
        assert image.shape == (30, 40, 3) and image.dtype == np.uint8 and mapping is None
        assert np.abs(image[..., 0].astype(int) - grey).mean() < 3


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_volumes_load_in_kji_order_with_geometry_and_slice(tmp_path, suffix, rng):
    array = rng.integers(-1000, 1000, (6, 20, 30)).astype(np.int16)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.7, 0.8, 2.5))
    sitk.WriteImage(image, str(tmp_path / f"v{suffix}"))
    loaded, geometry = load_array(tmp_path / f"v{suffix}")
    assert np.array_equal(loaded, array) and geometry.spacing == pytest.approx((0.7, 0.8, 2.5))
    with pytest.raises(ImageLoadError, match="AXIS:INDEX"):
        load_image_2d(tmp_path / f"v{suffix}")
    plane, mapping = load_image_2d(tmp_path / f"v{suffix}", (1, 7), modality="CT")
    assert plane.shape == (6, 30, 3) and mapping.to_voxel(4, 2) == (2, 7, 4)
    assert np.array_equal(plane[..., 0], window_ct(array[:, 7, :]))


def test_ct_windows_and_percentiles():
    hu = np.array([[-1000, -150, 50, 250, 3000]], np.float32)
    assert window_ct(hu, "abdomen").tolist() == [[0, 0, 128, 255, 255]]
    assert CT_WINDOWS["soft_tissue"] == (-160.0, 240.0)  # level 40, width 400
    mri = np.concatenate([np.zeros(100), np.linspace(1, 1000, 1000)]).reshape(11, 100)
    out = percentile_normalise(mri)
    assert out.min() == 0 and out.max() == 255 and out[0, 0] == 0
    assert to_rgb(np.full((4, 4), 0.5, np.float32))[0, 0].tolist() == [128, 128, 128]


def test_errors_name_the_file(tmp_path):
    with pytest.raises(ImageLoadError, match="no such file"):
        load_array(tmp_path / "missing.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ImageLoadError, match="bad.png"):
        load_array(tmp_path / "bad.png")
    (tmp_path / "notes.docx").touch()
    with pytest.raises(ImageLoadError, match="unsupported"):
        load_array(tmp_path / "notes.docx")
    with pytest.raises(ImageLoadError, match="no foreground"):
        largest_slice(np.zeros((3, 4, 4)))


def test_bundled_cases_load_with_licences():
    cases = bundled_manifest()
    assert len(cases) >= 6
    licences = (BUNDLED_DATA / "LICENSES.md").read_text()
    for case in cases:
        assert case.licence and case.licence.split(" ")[0] in licences
        loaded = load_case(case)
        assert loaded.image.dtype == np.uint8 and loaded.image.shape[:2] == loaded.ground_truth.shape
        assert loaded.ground_truth.any()
    volume = next(c for c in cases if c.dims == 3)
    loaded = load_case(volume)
    assert loaded.slice.axis == 0  # the largest-foreground axial slice
    mask, _ = load_array(volume.mask)
    assert loaded.slice.index == int(np.argmax((mask == volume.label).sum(axis=(1, 2))))


def test_manifest_rows_and_errors(tmp_path):
    rows = [{"id": "a/b/c", "image": "i.npy", "mask": "m.npy", "dims": 2, "mask_threshold": 0.5, "new": 1}]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    (case,) = read_manifest(tmp_path / "m.jsonl")
    assert case.group == "a/b" and case.image == tmp_path / "i.npy" and case.extra == {"new": 1}
    (tmp_path / "bad.jsonl").write_text('{"id": "x"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        read_manifest(tmp_path / "bad.jsonl")


@pytest.mark.skipif(not (SHARED_DATA / "manifest.jsonl").exists(), reason="../shared/data is not here")
def test_every_shared_row_with_a_single_target_loads():
    for case in read_manifest(SHARED_DATA / "manifest.jsonl"):
        if case.single_target:
            loaded = load_case(case)
            assert loaded.ground_truth.any(), case.id
