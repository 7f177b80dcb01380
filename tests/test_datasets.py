"""Tests for the synthetic data generators in cellulus_fast.datasets."""
import numpy as np
import pytest
from scipy import ndimage as ndi

from cellulus_fast import datasets
from cellulus_fast.datasets import CONDITIONS, ZooData, synthetic, zoo


@pytest.fixture(scope="module")
def default_data():
    return synthetic(num_images=2, size=128, num_cells=12, seed=3)


def test_shapes_and_dtypes(default_data):
    images, labels = default_data
    assert len(images) == len(labels) == 2
    for im, lb in zip(images, labels):
        assert im.shape == lb.shape == (128, 128)
        assert im.dtype == np.float32 and lb.dtype == np.int32
        assert np.isfinite(im).all()


def test_non_square_size():
    images, labels = synthetic(num_images=1, size=(64, 96), num_cells=5, seed=0)
    assert images[0].shape == labels[0].shape == (64, 96)


def test_reproducible_for_a_seed(default_data):
    images, labels = synthetic(num_images=2, size=128, num_cells=12, seed=3)
    for a, b in zip(images, default_data[0]):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(labels, default_data[1]):
        np.testing.assert_array_equal(a, b)


def test_different_seeds_differ(default_data):
    images, labels = synthetic(num_images=2, size=128, num_cells=12, seed=4)
    assert not np.array_equal(images[0], default_data[0][0])
    assert not np.array_equal(labels[0], default_data[1][0])
    # the images of one call differ from each other too
    assert not np.array_equal(default_data[1][0], default_data[1][1])


def test_labels_consecutive_and_count():
    _, labels = synthetic(num_images=2, size=256, num_cells=40, seed=0)
    for lb in labels:
        ids = np.unique(lb)
        assert ids[0] == 0
        np.testing.assert_array_equal(ids[1:], np.arange(1, lb.max() + 1))
        assert 0.8 * 40 <= lb.max() <= 40


def test_each_label_is_one_connected_cell(default_data):
    for lb in default_data[1]:
        for k, sl in enumerate(ndi.find_objects(lb), start=1):
            assert ndi.label(lb[sl] == k)[1] == 1
            assert (lb == k).sum() > 20


def test_cells_touch_sometimes():
    _, labels = synthetic(num_images=2, size=256, num_cells=40, seed=0)
    touching = 0
    for lb in labels:
        # horizontally / vertically adjacent pixels of two different cells
        for a, b in ((lb[1:], lb[:-1]), (lb[:, 1:], lb[:, :-1])):
            touching += np.count_nonzero((a > 0) & (b > 0) & (a != b))
    assert touching > 0


def test_cells_brighter_than_background(default_data):
    for im, lb in zip(*default_data):
        assert im[lb > 0].mean() > 2 * im[lb == 0].mean()
        # every single cell is brighter than the background on average
        means = ndi.mean(im, lb, index=np.arange(1, lb.max() + 1))
        assert (means > im[lb == 0].mean()).all()


# ---- data zoo -------------------------------------------------------------------------------------------

ZOO_SIZE = 192


@pytest.fixture(scope="module")
def zoo_data():
    """Two images per condition (seed 5), generated once."""
    return {name: zoo(name, num_images=2, size=ZOO_SIZE, seed=5) for name in CONDITIONS}


def _far_background(lb, dist=4):
    return ndi.distance_transform_edt(lb == 0) > dist


def _touching_pairs(lb):
    pairs = ((lb[1:], lb[:-1]), (lb[:, 1:], lb[:, :-1]))
    return sum(np.count_nonzero((a > 0) & (b > 0) & (a != b)) for a, b in pairs)


def _border_ids(lb):
    return np.unique(np.concatenate([lb[0], lb[-1], lb[:, 0], lb[:, -1]]))


def test_conditions_listed_and_dispatched():
    assert CONDITIONS == ("fluo_nuclei", "large_cells", "membrane", "dense", "mixed_sizes", "low_snr", "debris")
    for name in CONDITIONS:
        a = zoo(name, num_images=1, size=64, seed=2)
        b = getattr(datasets, name)(num_images=1, size=64, seed=2)
        assert isinstance(a, ZooData) and a.name == name
        np.testing.assert_array_equal(a.images[0], b.images[0])
        np.testing.assert_array_equal(a.labels[0], b.labels[0])


@pytest.mark.parametrize("name", CONDITIONS)
def test_zoo_shapes_and_dtypes(zoo_data, name):
    data = zoo_data[name]
    assert data.name == name and isinstance(data.diameter, float) and data.diameter > 0
    assert len(data.images) == len(data.labels) == 2
    for im, lb in zip(data.images, data.labels):
        assert im.shape == lb.shape == (ZOO_SIZE, ZOO_SIZE)
        assert im.dtype == np.uint16 and lb.dtype == np.int32
        # a camera offset: the background sits around 100 ADU, not at 0
        assert np.median(im[lb == 0]) >= 95 and im.max() > np.median(im)
    small = zoo(name, num_images=1, size=(64, 100), seed=0)
    assert small.images[0].shape == small.labels[0].shape == (64, 100)


@pytest.mark.parametrize("name", CONDITIONS)
def test_zoo_labels_consecutive_and_connected(zoo_data, name):
    for lb in zoo_data[name].labels:
        ids = np.unique(lb)
        assert ids[0] == 0 and lb.max() >= 3
        np.testing.assert_array_equal(ids[1:], np.arange(1, lb.max() + 1))
        for k, sl in enumerate(ndi.find_objects(lb), start=1):
            assert ndi.label(lb[sl] == k)[1] == 1, f"{name}: object {k} is not one connected component"


@pytest.mark.parametrize("name", CONDITIONS)
def test_zoo_reproducible_and_seed_dependent(zoo_data, name):
    data = zoo_data[name]
    again = zoo(name, num_images=2, size=ZOO_SIZE, seed=5)
    for a, b in zip(again.images + again.labels, data.images + data.labels):
        np.testing.assert_array_equal(a, b)
    other = zoo(name, num_images=1, size=ZOO_SIZE, seed=6)
    assert not np.array_equal(other.images[0], data.images[0])
    assert not np.array_equal(other.labels[0], data.labels[0])
    assert not np.array_equal(data.labels[0], data.labels[1])


def test_zoo_stream_keyed_on_the_name_not_the_position(monkeypatch):
    # adding or reordering conditions must not change any other condition's data
    before = {name: zoo(name, num_images=1, size=64, seed=4) for name in ("fluo_nuclei", "debris")}
    monkeypatch.setattr(datasets, "CONDITIONS", ("new_condition",) + tuple(reversed(CONDITIONS)))
    for name, data in before.items():
        again = zoo(name, num_images=1, size=64, seed=4)
        np.testing.assert_array_equal(again.images[0], data.images[0])
        np.testing.assert_array_equal(again.labels[0], data.labels[0])


@pytest.mark.parametrize("name", CONDITIONS)
def test_zoo_objects_brighter_than_background(zoo_data, name):
    for im, lb in zip(zoo_data[name].images, zoo_data[name].labels):
        im = im.astype(np.float64)
        assert im[lb > 0].mean() > im[_far_background(lb)].mean()


@pytest.mark.parametrize("name", CONDITIONS)
def test_zoo_border_objects_kept(zoo_data, name):
    # objects cut by the image border are kept, so some labels touch it
    assert sum(len(_border_ids(lb)) - 1 for lb in zoo_data[name].labels) >= 2


@pytest.mark.parametrize("name", ["fluo_nuclei", "large_cells", "membrane", "dense", "mixed_sizes"])
def test_zoo_touching_objects_keep_distinct_ids(zoo_data, name):
    assert sum(_touching_pairs(lb) for lb in zoo_data[name].labels) > 0


@pytest.mark.parametrize("name", CONDITIONS)
def test_zoo_median_diameter_matches_nominal(name):
    data = zoo(name, num_images=2, size=256, seed=1)
    diameters = []
    for lb in data.labels:
        inner = np.setdiff1d(np.arange(1, lb.max() + 1), _border_ids(lb))  # border cuts are smaller
        diameters.extend(np.sqrt(4 * np.bincount(lb.ravel())[inner] / np.pi))
    assert len(diameters) >= 5
    assert 0.75 * data.diameter <= np.median(diameters) <= 1.33 * data.diameter


def test_fluo_nuclei_foreground_sizes_and_brightness_spread():
    data = zoo("fluo_nuclei", num_images=2, size=256, seed=0)
    assert data.diameter == 22.0
    excess = []
    for im, lb in zip(data.images, data.labels):
        assert 0.10 <= (lb > 0).mean() <= 0.30
        d = np.sqrt(4 * np.bincount(lb.ravel())[1:] / np.pi)
        inner = np.setdiff1d(np.arange(1, lb.max() + 1), _border_ids(lb))
        # what the generator guarantees: blobs of at least 12 px diameter (at most 40, axis ratio <= 1.9),
        # of which an object keeps >= 40% and >= 8 pixels (0.9: pixelisation of a small blob)
        area = np.bincount(lb.ravel())[1:]
        assert area.min() >= 8 and area[inner - 1].min() >= 0.4 * 0.9 * np.pi * 6 ** 2
        assert d.max() <= 1.2 * 40
        # brightness of each nucleus above its local background (a ring 4-12 px outside all objects)
        im = im.astype(np.float64)
        dist = ndi.distance_transform_edt(lb == 0)
        ring = (dist > 3) & (dist <= 12)
        for k, sl in enumerate(ndi.find_objects(lb), start=1):
            win = tuple(slice(max(s.start - 14, 0), s.stop + 14) for s in sl)
            near = ndi.distance_transform_edt(lb[win] != k) <= 14
            excess.append(im[win][lb[win] == k].mean() - np.median(im[win][ring[win] & near]))
    excess = np.array(excess)
    assert excess.min() > 0  # every nucleus above background, even the dimmest
    assert excess.max() / excess.min() >= 10


def test_dense_foreground_above_half():
    for lb in zoo("dense", num_images=2, size=256, seed=0).labels:
        assert (lb > 0).mean() > 0.5
        # most nuclei touch another one
        touching = set()
        for a, b in ((lb[1:], lb[:-1]), (lb[:, 1:], lb[:, :-1])):
            m = (a > 0) & (b > 0) & (a != b)
            touching |= set(a[m].tolist()) | set(b[m].tolist())
        assert len(touching) > 0.5 * lb.max()


def _enclosed_holes(lb):
    """Sizes of the background components (4-connected) that objects enclose (not connected to the
    image border through background)."""
    fg = lb > 0
    pieces, _ = ndi.label(ndi.binary_fill_holes(fg) & ~fg)
    return np.bincount(pieces.ravel())[1:]


@pytest.mark.parametrize("name", ["dense", "membrane"])
def test_packed_tissue_has_no_pinholes(zoo_data, name):
    # no 1-px seams or pockets between packed objects: background enclosed by objects is a real gap
    labels = zoo_data[name].labels + zoo(name, num_images=1, size=256, seed=0).labels
    for lb in labels:
        holes = _enclosed_holes(lb)
        assert np.all(holes >= datasets.PINHOLE), f"{name}: enclosed holes of {sorted(holes)[:5]} px"


def test_mixed_sizes_span_small_and_large():
    d = []
    for lb in zoo("mixed_sizes", num_images=2, size=256, seed=0).labels:
        inner = np.setdiff1d(np.arange(1, lb.max() + 1), _border_ids(lb))
        d.extend(np.sqrt(4 * np.bincount(lb.ravel())[inner] / np.pi))
    assert min(d) < 22 and max(d) > 45 and min(d) >= 0.8 * 15 and max(d) <= 1.2 * 60


def _snr(im, lb):
    im = im.astype(np.float64)
    far = _far_background(lb)
    return (im[lb > 0].mean() - im[far].mean()) / im[far].std()


def test_low_snr_is_about_two_and_others_are_not(zoo_data):
    for im, lb in zip(zoo_data["low_snr"].images, zoo_data["low_snr"].labels):
        assert 1.6 <= _snr(im, lb) <= 2.5
    for im, lb in zip(zoo_data["fluo_nuclei"].images, zoo_data["fluo_nuclei"].labels):
        assert _snr(im, lb) > 8


def _bright_unlabelled_spots(im, lb):
    """Connected groups (>= 3 px) of pixels brighter than the median object pixel, > 3 px from any object."""
    pieces, _ = ndi.label((im > np.median(im[lb > 0])) & _far_background(lb, 3))
    return int(np.count_nonzero(np.bincount(pieces.ravel())[1:] >= 3))


def test_debris_is_bright_but_unlabelled(zoo_data):
    for im, lb in zip(zoo_data["debris"].images, zoo_data["debris"].labels):
        assert _bright_unlabelled_spots(im, lb) >= 1
    for im, lb in zip(zoo_data["fluo_nuclei"].images, zoo_data["fluo_nuclei"].labels):
        assert _bright_unlabelled_spots(im, lb) == 0


def test_membrane_bright_outline_dim_interior(zoo_data):
    from cellulus_fast.datasets import _inner_distance

    for im, lb in zip(zoo_data["membrane"].images, zoo_data["membrane"].labels):
        im = im.astype(np.float64)
        t, _ = _inner_distance(lb)
        bg = np.median(im[_far_background(lb)])
        outline = im[(t >= 1) & (t <= 2)].mean() - bg
        interior = np.median(im[t > 6]) - bg
        assert 0 < interior < 0.35 * outline
        assert (lb > 0).mean() > 0.5  # packed tissue


def test_large_cells_have_bright_granules(zoo_data):
    for im, lb in zip(zoo_data["large_cells"].images, zoo_data["large_cells"].labels):
        im = im.astype(np.float64)
        bg = np.median(im[_far_background(lb)])
        inside = im[lb > 0] - bg
        assert np.percentile(inside, 99.5) > 2.5 * np.median(inside)


# ---- the painting step (exact labels) ----------------------------------------------------------------------

def _visible(shape, objects):
    """Independent reference: the last object painting a pixel owns it."""
    owner = np.full(shape, -1)
    for i, (rr, cc, *_) in enumerate(objects):
        ok = (rr >= 0) & (rr < shape[0]) & (cc >= 0) & (cc < shape[1])
        owner[rr[ok], cc[ok]] = i
    return owner


def test_paint_objects_counts_match_painted_pixels_after_occlusion():
    from cellulus_fast.datasets import _blob, _paint_objects

    rng = np.random.default_rng(0)
    shape = (100, 120)
    objects = [_blob(rng.uniform(-5, [105, 125]), rng.uniform(5, 14), rng.uniform(1, 1.6), rng.uniform(0, 3), 0.05,
                     rng) for _ in range(25)]
    # thin bars painted last cut some objects in pieces
    objects += [_blob(rng.uniform(0, [100, 120]), 5.0, 10.0, rng.uniform(0, 3), 0.0, rng) for _ in range(6)]
    labels, index = _paint_objects(shape, objects)
    owner = _visible(shape, objects)
    assert len(index) == labels.max() >= 10
    whole = fragmented = 0
    for k, i in enumerate(index, start=1):
        mine = labels == k
        assert np.all(owner[mine] == i)  # every labelled pixel was painted by that object, last
        rr, cc = objects[i][:2]
        in_image = np.count_nonzero((rr >= 0) & (rr < shape[0]) & (cc >= 0) & (cc < shape[1]))
        assert mine.sum() >= max(8, 0.4 * in_image)  # kept: >= 8 pixels and >= 40% visible
        pieces, num = ndi.label(owner == i)
        if num == 1:  # not cut in pieces by occluders: exactly its visible pixels
            np.testing.assert_array_equal(mine, pieces == 1)
            whole += 1
        else:  # cut in pieces: exactly its largest visible piece (the rest is background)
            sizes = np.bincount(pieces.ravel())[1:]
            assert np.count_nonzero(sizes == sizes.max()) == 1  # a unique largest piece in this scene
            np.testing.assert_array_equal(mine, pieces == 1 + np.argmax(sizes))
            fragmented += 1
    assert whole >= 5 and fragmented >= 3
    # objects that were dropped had little left (< 40% of their painted pixels, or < 8 pixels)
    for i in set(range(len(objects))) - set(index.tolist()):
        rr, cc = objects[i][:2]
        ok = (rr >= 0) & (rr < shape[0]) & (cc >= 0) & (cc < shape[1])
        sizes = np.bincount(ndi.label(owner == i)[0].ravel())[1:]
        assert len(sizes) == 0 or sizes.max() < max(8, 0.4 * ok.sum())


def test_paint_objects_border_and_touching():
    from skimage.draw import disk

    from cellulus_fast.datasets import _paint_objects

    shape = (64, 64)
    across = disk((-4.0, 30.0), 10.0)  # centre outside the image: cut by the border, kept
    a = disk((40.0, 20.0), 8.0)
    b = disk((40.0, 35.0), 8.0)  # touches a: a ends at column 27, b starts at 28
    labels, index = _paint_objects(shape, [np.array(across), np.array(a), np.array(b)])
    np.testing.assert_array_equal(index, [0, 1, 2])
    inside = np.count_nonzero(across[0] >= 0)
    assert 0 < inside < len(across[0])
    assert (labels == 1).sum() == inside
    assert (labels == 2).sum() == len(a[0]) and (labels == 3).sum() == len(b[0])
    assert np.count_nonzero((labels[:, :-1] == 2) & (labels[:, 1:] == 3)) > 0  # touching, distinct ids


def test_paint_objects_compete_splits_overlap_at_the_middle():
    from cellulus_fast.datasets import _blob, _paint_objects

    rng = np.random.default_rng(0)
    objs = [_blob((32.0, 24.0), 12.0, 1.0, 0.0, 0.0, rng), _blob((32.0, 40.0), 12.0, 1.0, 0.0, 0.0, rng)]
    labels, _ = _paint_objects((64, 64), objs, compete=True)
    cols1 = np.nonzero(labels == 1)[1]
    cols2 = np.nonzero(labels == 2)[1]
    assert cols1.max() <= 32 and cols2.min() >= 32  # the contact line is at the bisector x = 32
    assert abs((labels == 1).sum() - (labels == 2).sum()) <= 20
    assert _touching_pairs(labels) > 0


def test_paint_objects_compete_gives_dropped_pieces_to_the_neighbours():
    from cellulus_fast.datasets import _blob, _paint_objects

    rng = np.random.default_rng(0)
    # four touching disks around a middle one that is dropped (min_pixels): its pixels inside the tissue
    # go to the four neighbours (to the runner-up where it covers them, the rest by filling the pocket),
    # not to the background
    objs = [_blob(c, 12.0, 1.0, 0.0, 0.0, rng) for c in ((20.0, 20.0), (20.0, 44.0), (44.0, 20.0), (44.0, 44.0))]
    objs.append(_blob((32.0, 32.0), 13.0, 1.0, 0.0, 0.0, rng))
    kept, _ = _paint_objects((64, 64), objs, compete=True)
    middle = kept == 5
    assert 250 < middle.sum() < 350
    labels, index = _paint_objects((64, 64), objs, compete=True, min_pixels=350)
    np.testing.assert_array_equal(index, [0, 1, 2, 3])
    assert len(_enclosed_holes(labels)) == 0
    yy, xx = np.mgrid[:64, :64]
    assert np.all(labels[np.hypot(yy - 32, xx - 32) <= 12] > 0)  # the middle of the tissue is filled
    for k in range(1, 5):
        assert ndi.label(labels == k)[1] == 1
        assert np.all(labels[kept == k] == k)  # the neighbours only grow
        assert np.count_nonzero(labels[middle] == k) > 20  # shared out, not all to one neighbour
    # the same scene with occlusion (the middle painted first, under the others): it leaves background
    labels, index = _paint_objects((64, 64), objs[4:] + objs[:4], min_pixels=350)
    np.testing.assert_array_equal(index, [1, 2, 3, 4])
    assert labels[32, 32] == 0 and len(_enclosed_holes(labels)) == 1


def test_fill_pockets():
    from cellulus_fast.datasets import _fill_pockets

    lb = np.zeros((20, 30), dtype=np.int32)
    lb[2:18, 2:14] = 1
    lb[2:18, 14:28] = 2
    lb[9, 7] = 0  # a pinhole inside object 1
    lb[9, 14] = 0  # a pinhole on the contact line
    lb[5:9, 18:23] = 0  # a 20-px pocket inside object 2, unclaimed: a real gap
    lb[12:16, 18:23] = 0  # a 20-px pocket inside object 2, claimed
    lb[0:18, 26:28] = 0  # background connected to the border: not a pocket
    claimed = np.zeros(lb.shape, dtype=bool)
    claimed[12:16, 18:23] = True
    out = _fill_pockets(lb, 8, claimed=claimed)
    assert out[9, 7] == 1 and out[9, 14] in (1, 2) and np.all(out[12:16, 18:23] == 2)
    assert np.all(out[5:9, 18:23] == 0) and np.all(out[:, 26:28] == 0)
    assert np.all(out[lb > 0] == lb[lb > 0])  # objects only grow into pockets
    assert _fill_pockets(lb, 8) is not None and np.all(_fill_pockets(lb, 8)[12:16, 18:23] == 0)
    assert lb[9, 7] == 0  # the input is left alone


def test_place_blobs_respects_spacing_and_reports_which():
    from cellulus_fast.datasets import _place_blobs

    rng = np.random.default_rng(1)
    radii = rng.uniform(5, 15, size=60)
    centres, placed, which = _place_blobs((128, 128), radii, rng, cluster_prob=0.5, min_sep=0.8)
    assert 10 <= len(centres) < 60  # not all fit
    np.testing.assert_array_equal(placed, radii[which])
    assert np.all(np.diff(which) > 0)
    dist = np.hypot(*(centres[:, None] - centres[None]).transpose(2, 0, 1))
    np.fill_diagonal(dist, np.inf)
    assert np.all(dist >= 0.8 * (placed[:, None] + placed[None]) - 1e-9)
    # clustering: some pairs closer than the sum of their radii (touching / slightly overlapping)
    assert np.any(dist < placed[:, None] + placed[None])
    assert centres.min() >= -0.3 * 15 and centres.max() <= 127 + 0.3 * 15


# ---- arguments -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    (dict(name="nuclei"), "valid names: fluo_nuclei, large_cells"),
    (dict(name=3), "unknown condition"),
    (dict(num_images=0), "num_images"),
    (dict(num_images=1.5), "num_images"),
    (dict(num_images=True), "num_images"),
    (dict(size=32), ">= 64"),
    (dict(size=(64, 63)), ">= 64"),
    (dict(size=(64, 64, 64)), "pair of ints"),
    (dict(size="256"), "pair of ints"),
    (dict(size=64.0), "pair of ints"),
    (dict(seed=-1), "seed"),
    (dict(seed=1.0), "seed"),
    (dict(seed=None), "seed"),
])
def test_zoo_bad_arguments(kwargs, message):
    args = dict(name="fluo_nuclei", num_images=1, size=64, seed=0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        zoo(**args)


@pytest.mark.parametrize("name", CONDITIONS)
def test_condition_functions_validate_too(name):
    with pytest.raises(ValueError, match=">= 64"):
        getattr(datasets, name)(size=10)
