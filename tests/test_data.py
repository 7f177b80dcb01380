"""Tests for cellulus_fast.data: image loading, normalisation and random crops."""
import warnings

import numpy as np
import pytest
import tifffile
import torch

from cellulus_fast.data import CropSampler, load_images, normalize


def _img(seed, shape=(20, 24), dtype=np.uint16):
    return np.random.default_rng(seed).integers(0, 1000, size=shape).astype(dtype)


# ---------------------------------------------------------------------------------------------------
# load_images
# ---------------------------------------------------------------------------------------------------

def test_single_file_2d(tmp_path):
    a = _img(0)
    tifffile.imwrite(tmp_path / "a.tif", a)
    (out,) = load_images(tmp_path / "a.tif")
    assert out.dtype == np.float32 and out.shape == (1, 20, 24)
    np.testing.assert_array_equal(out[0], a)
    (out2,) = load_images(str(tmp_path / "a.tif"))
    np.testing.assert_array_equal(out, out2)


def test_folder_sorted_by_name_and_ignores_other_files(tmp_path):
    for name, seed in (("b.tiff", 1), ("a.tif", 0), ("c.TIF", 2)):
        tifffile.imwrite(tmp_path / name, _img(seed))
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "sub").mkdir()
    out = load_images(tmp_path)
    assert len(out) == 3
    for im, seed in zip(out, (0, 1, 2)):
        np.testing.assert_array_equal(im[0], _img(seed))


def test_glob_pattern(tmp_path):
    for i in range(3):
        tifffile.imwrite(tmp_path / f"img{i}.tif", _img(i))
    tifffile.imwrite(tmp_path / "other.tif", _img(9))
    out = load_images(str(tmp_path / "img*.tif"))
    assert len(out) == 3
    np.testing.assert_array_equal(out[2][0], _img(2))


def test_multipage_stack(tmp_path):
    stack = np.stack([_img(i) for i in range(3)])
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    out = load_images(tmp_path / "stack.tif")
    assert len(out) == 3 and all(im.shape == (1, 20, 24) for im in out)
    np.testing.assert_array_equal(out[1][0], stack[1])
    # the same stack read as one 3-channel image
    (multi,) = load_images(tmp_path / "stack.tif", axes="CYX")
    assert multi.shape == (3, 20, 24)
    np.testing.assert_array_equal(multi, stack)


def test_pages_written_one_by_one(tmp_path):
    # each page is a separate tifffile series: all of them must be read, in order
    with tifffile.TiffWriter(tmp_path / "pages.tif") as writer:
        for i in range(3):
            writer.write(_img(i))
    out = load_images(tmp_path / "pages.tif")
    assert len(out) == 3
    for im, seed in zip(out, range(3)):
        np.testing.assert_array_equal(im[0], _img(seed))


def test_axes_variants():
    tcyx = np.random.default_rng(0).random((2, 3, 8, 9))
    out = load_images(tcyx, axes="TCYX")
    assert len(out) == 2 and out[1].shape == (3, 8, 9)
    np.testing.assert_allclose(out[1], tcyx[1].astype(np.float32))
    yxc = np.moveaxis(tcyx[0], 0, -1)
    (im,) = load_images(yxc, axes="YXC")
    np.testing.assert_allclose(im, tcyx[0].astype(np.float32))
    with pytest.raises(ValueError, match="axes"):
        load_images(tcyx)  # 4-D needs axes
    with pytest.raises(ValueError, match="axes"):
        load_images(tcyx, axes="TCYZ")
    with pytest.raises(ValueError, match="axes"):
        load_images(tcyx, axes="CYX")  # wrong number of axes


def test_rgb_tiff_samples_become_channels(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (16, 18, 3)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    (im,) = load_images(tmp_path / "rgb.tif")
    assert im.shape == (3, 16, 18)
    np.testing.assert_array_equal(im, np.moveaxis(rgb, -1, 0))


def test_ctc_layout(tmp_path):
    for seq, seeds in (("01", (0, 1, 2)), ("02", (3, 4))):
        (tmp_path / seq).mkdir()
        for t, seed in enumerate(seeds):
            tifffile.imwrite(tmp_path / seq / f"t{t:03d}.tif", _img(seed))
    for extra in ("01_GT", "01_ST"):
        (tmp_path / extra / "SEG").mkdir(parents=True)
        tifffile.imwrite(tmp_path / extra / "SEG" / "man_seg000.tif", _img(99))
    tifffile.imwrite(tmp_path / "01_GT" / "t000.tif", _img(98))
    (tmp_path / "01" / "readme.txt").write_text("ignored")
    out = load_images(tmp_path)
    assert len(out) == 5
    for im, seed in zip(out, range(5)):
        np.testing.assert_array_equal(im[0], _img(seed))
    # a single sequence folder is a plain folder of TIFFs
    assert len(load_images(tmp_path / "02")) == 2


def test_arrays_and_mixed_lists(tmp_path):
    a = _img(0).astype(np.float64)
    (out,) = load_images(a)
    assert out.shape == (1, 20, 24) and out.dtype == np.float32
    tifffile.imwrite(tmp_path / "f.tif", _img(5))
    stack = np.stack([_img(1), _img(2)])
    out = load_images([a, stack, tmp_path / "f.tif", torch.from_numpy(_img(3).astype(np.float32))])
    assert len(out) == 5
    for im, ref in zip(out, [a, _img(1), _img(2), _img(5), _img(3)]):
        np.testing.assert_array_equal(im[0], ref)


def test_missing_and_empty_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match="no TIFF"):
        load_images(tmp_path)
    with pytest.raises(FileNotFoundError, match="matches no files"):
        load_images(str(tmp_path / "*.tif"))
    with pytest.raises(FileNotFoundError, match="nope.tif"):
        load_images(tmp_path / "nope.tif")
    with pytest.raises(ValueError, match="empty"):
        load_images([])
    with pytest.raises(TypeError):
        load_images(42)


def test_non_image_file(tmp_path):
    (tmp_path / "bad.tif").write_text("this is not a TIFF")
    with pytest.raises(ValueError, match="bad.tif"):
        load_images(tmp_path)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="notes.txt"):
        load_images(tmp_path / "notes.txt")


def test_different_channel_counts(tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", _img(0))
    tifffile.imwrite(tmp_path / "b.tif", np.zeros((16, 18, 3), np.uint8) + np.arange(3, dtype=np.uint8),
                     photometric="rgb")
    with pytest.raises(ValueError, match=r"b\.tif has 3 channel"):
        load_images(tmp_path)


def test_nan_and_inf_named():
    good = np.random.default_rng(0).random((8, 8))
    bad = good.copy()
    bad[3, 3] = np.nan
    with pytest.raises(ValueError, match="image 1 contains NaN"):
        load_images([good, bad])
    bad[3, 3] = np.inf
    with pytest.raises(ValueError, match=r"array\[page 1\] contains NaN or inf"):
        load_images(np.stack([good, bad]))


def test_min_size(tmp_path):
    tifffile.imwrite(tmp_path / "small.tif", _img(0, shape=(10, 30)))
    assert len(load_images(tmp_path, min_size=10)) == 1
    with pytest.raises(ValueError, match="small.tif is 10x30 pixels"):
        load_images(tmp_path, min_size=17)


def test_constant_images(tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", _img(0))
    tifffile.imwrite(tmp_path / "b.tif", np.full((20, 24), 7, np.uint16))
    with pytest.warns(UserWarning, match="b.tif"):
        out = load_images(tmp_path)
    assert len(out) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(load_images(tmp_path, skip_constant=False)) == 2
    with pytest.raises(ValueError, match="constant"), pytest.warns(UserWarning):
        load_images(tmp_path / "b.tif")


# ---------------------------------------------------------------------------------------------------
# normalize
# ---------------------------------------------------------------------------------------------------

def test_normalize_percentiles_per_channel():
    rng = np.random.default_rng(0)
    im = np.stack([rng.normal(5, 2, (64, 64)), rng.uniform(100, 1000, (64, 64))]).astype(np.float32)
    out = normalize(im, 1.0, 99.8)
    assert out.dtype == np.float32 and out.shape == im.shape
    for c in range(2):
        lo, hi = np.percentile(out[c], [1.0, 99.8])
        assert abs(lo) < 1e-5 and abs(hi - 1) < 1e-5
        assert out[c].min() < 0 and out[c].max() > 1  # not clipped
    # a 2-D image: percentiles over the whole image
    out2 = normalize(im[1])
    np.testing.assert_allclose(out2, out[1], atol=1e-6)


def test_normalize_constant_and_errors():
    out = normalize(np.full((1, 5, 5), 3.0))
    assert np.isfinite(out).all() and (out == 0).all()
    with pytest.raises(ValueError):
        normalize(np.zeros((4, 4)), low=50, high=10)


# ---------------------------------------------------------------------------------------------------
# CropSampler
# ---------------------------------------------------------------------------------------------------

def _dihedral(x):
    """All 8 dihedral transforms of a (C, H, W) array."""
    rots = [np.rot90(x, k, axes=(1, 2)) for k in range(4)]
    return rots + [r[:, :, ::-1] for r in rots]


def test_crop_shapes_and_content():
    rng = np.random.default_rng(0)
    images = [rng.random((2, 40, 50), dtype=np.float32), rng.random((2, 64, 33), dtype=np.float32)]
    sampler = CropSampler(images, crop_size=16, seed=1)
    batch = sampler.batch(6)
    assert isinstance(batch, torch.Tensor) and batch.dtype == torch.float32
    assert batch.shape == (6, 2, 16, 16)
    # every crop is a dihedral transform of some window of some image
    for crop in batch.numpy():
        found = False
        for im in images:
            for t in _dihedral(crop):
                # locate by the top-left pixel of channel 0 (random floats: unique)
                ys, xs = np.nonzero(im[0] == t[0, 0, 0])
                for y, x in zip(ys, xs):
                    if y + 16 <= im.shape[1] and x + 16 <= im.shape[2] and \
                            np.array_equal(im[:, y:y + 16, x:x + 16], t):
                        found = True
        assert found


def test_crop_deterministic_and_resumable():
    images = [np.random.default_rng(0).random((1, 30, 30), dtype=np.float32)]
    a, b = CropSampler(images, crop_size=8, seed=5), CropSampler(images, crop_size=8, seed=5)
    torch.testing.assert_close(a.batch(4), b.batch(4))
    assert not torch.equal(a.batch(4), CropSampler(images, crop_size=8, seed=6).batch(4))
    state = a.state_dict()
    expected = [a.batch(3) for _ in range(3)]
    c = CropSampler(images, crop_size=8, seed=123)
    c.load_state_dict(state)
    for e in expected:
        torch.testing.assert_close(c.batch(3), e)


def test_crop_uses_all_transforms_and_images():
    # a 2x2 asymmetric pattern makes each dihedral transform distinguishable
    im = np.arange(4, dtype=np.float32).reshape(1, 2, 2)
    sampler = CropSampler([im], crop_size=2, seed=0)
    seen = {tuple(c.ravel()) for c in sampler.batch(200).numpy()}
    assert len(seen) == 8
    sampler = CropSampler([im], crop_size=2, seed=0, augment=False)
    assert (sampler.batch(10).numpy() == im).all()
    two = [np.zeros((1, 4, 4), np.float32), np.ones((1, 4, 4), np.float32)]
    means = CropSampler(two, crop_size=4, seed=0).batch(400).mean(dim=(1, 2, 3))
    assert 0.35 < means.mean() < 0.65


def test_crop_by_area():
    small, big = np.zeros((1, 4, 4), np.float32), np.ones((1, 12, 12), np.float32)
    means = CropSampler([small, big], crop_size=4, seed=0, by_area=True).batch(400).mean(dim=(1, 2, 3))
    assert 0.85 < means.mean() < 0.95  # 144 / 160 = 0.9


def test_crop_reflect_padding_for_small_images():
    im = np.arange(3 * 5, dtype=np.float32).reshape(1, 3, 5)
    sampler = CropSampler([im], crop_size=8, seed=0, augment=False)
    crop = sampler.batch(1)[0].numpy()
    expected = np.pad(im, ((0, 0), (2, 3), (1, 2)), mode="reflect")
    np.testing.assert_array_equal(crop, expected)
    # 2-D images are accepted as single-channel
    assert CropSampler([im[0]], crop_size=4).batch(2).shape == (2, 1, 4, 4)


def test_crop_sampler_errors():
    with pytest.raises(ValueError):
        CropSampler([], crop_size=4)
    with pytest.raises(ValueError, match="channels"):
        CropSampler([np.zeros((1, 8, 8)), np.zeros((2, 8, 8))], crop_size=4)
    with pytest.raises(ValueError):
        CropSampler([np.zeros((1, 8, 8))], crop_size=4).batch(0)


def test_tiff_axes_metadata_is_followed(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (3, 20, 24)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "planar.tif", rgb, photometric="rgb", planarconfig="separate")  # tifffile: SYX
    (image,) = load_images(tmp_path / "planar.tif")
    assert image.shape == (3, 20, 24)
    np.testing.assert_array_equal(image, rgb)
    tifffile.imwrite(tmp_path / "ij.tif", rgb, imagej=True, metadata={"axes": "CYX"})  # an ImageJ hyperstack
    (image,) = load_images(tmp_path / "ij.tif")
    assert image.shape == (3, 20, 24)
    hyper = np.random.default_rng(1).integers(0, 255, (2, 3, 20, 24)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "ij4.tif", hyper, imagej=True, metadata={"axes": "ZCYX"})
    out = load_images(tmp_path / "ij4.tif")
    assert len(out) == 2 and out[1].shape == (3, 20, 24)
    np.testing.assert_array_equal(out[1], hyper[1])
    # an explicit axes still wins over the file's
    assert len(load_images(tmp_path / "ij.tif", axes="TYX")) == 3
    # a z-stack written with imagej=True is marked as channels by tifffile: more than 4 are read as images
    stack = np.random.default_rng(2).integers(0, 255, (6, 20, 24)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "zstack.tif", stack, imagej=True)
    with pytest.warns(UserWarning, match="declares 6 channels"):
        out = load_images(tmp_path / "zstack.tif")
    assert len(out) == 6 and out[0].shape == (1, 20, 24)


def test_an_rgb_shaped_array_needs_axes():
    rgb = np.random.default_rng(0).random((96, 96, 3))
    with pytest.raises(ValueError, match=r"96 grey images of 96x3 px; pass axes='YXC'"):
        load_images(rgb)
    assert load_images(rgb, axes="YXC")[0].shape == (3, 96, 96)
    assert len(load_images(rgb, axes="TYX")) == 96  # a stack, if that is what it is
    assert len(load_images(np.random.default_rng(0).random((3, 96, 96)))) == 3  # a stack of 3 is not RGB


def test_integers_float32_cannot_keep_apart_are_named():
    image = np.full((32, 32), 2**40, np.int64)
    image[8:16, 8:16] += 5
    with pytest.raises(ValueError, match=r"values in \[1099511627776, 1099511627781\], too far from 0 for float32"):
        load_images(image)
    (shifted,) = load_images(image - image.min())
    assert shifted.max() == 5
    wide = np.random.default_rng(0).integers(0, 2**32, (32, 32), dtype=np.uint64)  # large but wide: fine
    assert load_images(wide)[0].dtype == np.float32
