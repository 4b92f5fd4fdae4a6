import colorsys

import numpy as np
import pytest
from PIL import Image

from pipelines import scenes
from pipelines.image_folder import list_images

N = 8


@pytest.fixture(scope="module")
def train_dir(tmp_path_factory):
    return scenes.ensure_scenes(N, seed=3, root=tmp_path_factory.mktemp("cache"), workers=1)


def test_layout_sizes_and_label_maps(train_dir):
    images = list_images(train_dir)  # the scanner must skip the label maps
    assert len(images) == N
    assert train_dir.name == "train" and train_dir.parent.name == f"scenes-{scenes.VERSION}-3-{N}"
    assert not [p for p in train_dir.parent.iterdir() if p.name.startswith(".")]  # no temp folder left
    for p in images:
        with Image.open(p) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            w, h = im.size
        assert scenes.MIN_SIDE <= w <= scenes.MAX_SIDE and scenes.MIN_SIDE <= h <= scenes.MAX_SIDE
        labels = scenes.load_label_map(p)
        assert labels.shape == (h, w) and labels.dtype == np.uint8
        assert labels.max() < len(scenes.CLASSES)
        assert (labels == 0).any() and (labels > 0).any()


def test_deterministic_for_a_seed(train_dir, tmp_path):
    again = scenes.ensure_scenes(N, seed=3, root=tmp_path, workers=2)
    for a, b in zip(list_images(train_dir), list_images(again)):
        assert a.read_bytes() == b.read_bytes()
        assert scenes.label_map_path(a).read_bytes() == scenes.label_map_path(b).read_bytes()
    other = scenes.ensure_scenes(N, seed=4, root=tmp_path, workers=1)
    assert list_images(other)[0].read_bytes() != list_images(again)[0].read_bytes()
    val = scenes.ensure_scenes(N, seed=3, root=tmp_path, split="val", workers=1)
    assert list_images(val)[0].read_bytes() != list_images(again)[0].read_bytes()


def test_reuses_complete_cache_and_env_override(tmp_path, monkeypatch):
    monkeypatch.setenv("PIXPRO_FAST_CACHE", str(tmp_path / "env"))
    first = scenes.ensure_scenes(2, seed=0, workers=1)
    assert first.is_relative_to(tmp_path / "env")
    stamp = {p: p.stat().st_mtime_ns for p in first.iterdir()}
    assert scenes.ensure_scenes(2, seed=0, workers=1) == first
    assert {p: p.stat().st_mtime_ns for p in first.iterdir()} == stamp


def test_incomplete_cache_is_rebuilt(tmp_path):
    target = scenes.scenes_dir(2, 0, tmp_path)
    target.mkdir(parents=True)
    (target / "scene_00000.jpg").write_bytes(b"partial")  # no manifest: an interrupted old build
    out = scenes.ensure_scenes(2, seed=0, root=tmp_path, workers=1)
    assert out == target and len(list_images(out)) == 2
    with Image.open(out / "scene_00000.jpg") as im:
        im.load()


def test_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        scenes.ensure_scenes(2, split="test")
    with pytest.raises(ValueError, match="n_images"):
        scenes.ensure_scenes(0)


@pytest.fixture(scope="module")
def shape_instances():
    """(class id, mean RGB) of every visible class region of 60 in-memory scenes."""
    out = []
    for i in range(60):
        img, labels = scenes.generate_scene(np.random.default_rng((11, i)))
        for c in np.unique(labels):
            if c == 0:
                continue
            mask = labels == c
            if mask.sum() >= 200:
                out.append((int(c), img[mask].mean(axis=0)))
    return out


def test_every_class_present(shape_instances):
    assert {c for c, _ in shape_instances} == set(range(1, len(scenes.CLASSES)))


def test_shapes_have_their_form():
    """Filled area relative to the unit disc: each class has its own, fixed by its geometry."""
    g = np.linspace(-1.2, 1.2, 481, dtype=np.float32)
    u, v = np.meshgrid(g, g)
    cell = (g[1] - g[0]) ** 2
    area = {c: scenes._shape_mask(c, u, v).sum() * cell / np.pi for c in scenes.CLASSES[1:]}
    assert area["circle"] == pytest.approx(1.0, abs=0.01)
    assert area["square"] == pytest.approx(4 * 0.8 ** 2 / np.pi, abs=0.01)
    assert area["ring"] == pytest.approx(1 - 0.55 ** 2, abs=0.01)
    assert area["triangle"] == pytest.approx(3 * np.sqrt(3) / 4 / np.pi, abs=0.01)
    assert area["star"] == pytest.approx(5 * 0.42 * np.sin(np.pi / 5) / np.pi, abs=0.01)  # 10 triangles
    assert area["cross"] == pytest.approx((2 * 0.6 * 1.9 - 0.6 ** 2) / np.pi, abs=0.01)
    assert len({round(a, 2) for a in area.values()}) == len(area)


def test_colour_does_not_predict_class(shape_instances):
    """Per-class mean hue spreads over the whole circle, and a nearest-centroid classifier on
    mean colour is near chance (1/6); a class-dependent palette would make it near 1."""
    classes = sorted({c for c, _ in shape_instances})
    hues = {c: [] for c in classes}
    for c, rgb in shape_instances:
        hues[c].append(colorsys.rgb_to_hsv(*(rgb / 255.0))[0])
    for c in classes:
        h = np.asarray(hues[c])
        resultant = abs(np.exp(2j * np.pi * h).mean())  # 1 = one hue, ~0 = spread out
        assert len(h) >= 10 and resultant < 0.5, (scenes.CLASSES[c], resultant)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(shape_instances))
    half = len(order) // 2
    fit, held = [shape_instances[i] for i in order[:half]], [shape_instances[i] for i in order[half:]]
    centroids = {c: np.mean([x for k, x in fit if k == c], axis=0) for c in classes}
    hits = [min(classes, key=lambda k: np.linalg.norm(x - centroids[k])) == c for c, x in held]
    assert np.mean(hits) < 0.4


def test_each_class_has_its_own_fill_pattern():
    """Fill patterns mix both colours, and the families differ from one another: the same
    frame and period give masks that disagree on a large share of pixels."""
    g = np.linspace(-1.0, 1.0, 201, dtype=np.float32)
    u, v = np.meshgrid(g, g)
    masks = {}
    for cls, kind in scenes.PATTERNS.items():
        t = scenes._pattern(kind, np.random.default_rng(3), u, v, period=0.4)
        assert set(np.unique(t)) == {0.0, 1.0}, cls
        assert 0.15 < t.mean() < 0.85, (cls, t.mean())
        masks[kind] = t.astype(bool)
    assert set(scenes.PATTERNS) == set(scenes.CLASSES[1:]) and len(set(scenes.PATTERNS.values())) == len(masks)
    kinds = sorted(masks)
    for i, a in enumerate(kinds):
        for b in kinds[i + 1:]:
            agree = (masks[a] == masks[b]).mean()
            assert 0.2 < agree < 0.8, (a, b, agree)


def test_objects_are_patterned_and_background_is_smooth():
    """Brightness varies far more within 8x8 blocks inside objects than on the background
    (where only the smooth shading and the sensor noise vary)."""
    inside, outside = [], []
    for i in range(10):
        img, labels = scenes.generate_scene(np.random.default_rng((12, i)))
        h, w = (s - s % 8 for s in labels.shape)
        luma = img[:h, :w].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        blocks = luma.reshape(h // 8, 8, w // 8, 8).transpose(0, 2, 1, 3).reshape(-1, 64)
        lab = labels[:h, :w].reshape(h // 8, 8, w // 8, 8).transpose(0, 2, 1, 3).reshape(-1, 64)
        pure = (lab == lab[:, :1]).all(1)
        inside.append(blocks[pure & (lab[:, 0] > 0)].std(1).mean())
        outside.append(blocks[pure & (lab[:, 0] == 0)].std(1).mean())
    assert np.median(inside) > 3 * np.median(outside), (inside, outside)


# --------------------------------------------------------------------------- objects: the labelled ImageFolder

def test_recording_objects_leaves_the_scene_unchanged():
    plain = scenes.generate_scene(np.random.default_rng(11))
    objects = []
    recorded = scenes.generate_scene(np.random.default_rng(11), objects)
    assert np.array_equal(plain[0], recorded[0]) and np.array_equal(plain[1], recorded[1])
    assert 2 <= len(objects) <= 5
    for cls_id, cy, cx, r, (y0, y1, x0, x1), mask in objects:
        assert mask.shape == (y1 - y0, x1 - x0) and 1 <= cls_id < len(scenes.CLASSES)
        assert y0 <= cy <= y1 and x0 <= cx <= x1


def test_object_crops_keep_visible_objects_centred_and_drop_covered_ones():
    """A hand-made scene: object A (class 1) wholly covered by B (class 2), C (class 3) alone
    near the right edge. A is dropped; B's and C's crops are red (their own pixels) in the
    middle; C's window is shifted inside the image, not cut."""
    h, w = 100, 160
    image = np.zeros((h, w, 3), np.uint8)
    image[..., 2] = 255                                   # blue background
    labels = np.zeros((h, w), np.uint8)
    box_b, box_c = (20, 60, 20, 60), (40, 80, 130, 160)
    for y0, y1, x0, x1 in (box_b, box_c):
        image[y0:y1, x0:x1] = (255, 0, 0)
    labels[20:60, 20:60] = 2
    labels[40:80, 130:160] = 3
    full = lambda b: np.ones((b[1] - b[0], b[3] - b[2]), bool)   # noqa: E731
    objects = [(1, 40.0, 40.0, 10.0, (30, 50, 30, 50), full((30, 50, 30, 50))),
               (2, 40.0, 40.0, 20.0, box_b, full(box_b)),
               (3, 60.0, 150.0, 15.0, box_c, full(box_c)[:, :30])]
    crops = scenes.object_crops(image, labels, objects)
    assert [c for c, _ in crops] == [2, 3]
    mid = scenes.OBJECT_SIZE // 2
    for _, crop in crops:
        assert crop.shape == (scenes.OBJECT_SIZE, scenes.OBJECT_SIZE, 3)
        assert tuple(crop[mid, mid]) == (255, 0, 0)
    # B's window (side 48 around its centre) shows blue background at its corners
    assert crops[0][1][0, 0, 2] > 200 and crops[0][1][0, 0, 0] < 50


def test_objects_folder_is_an_image_folder_of_the_shape_classes(tmp_path):
    from pipelines.image_folder import scan_image_folder
    folder = scenes.ensure_objects(12, seed=3, root=tmp_path, workers=1)
    found = scan_image_folder(folder)
    manifest = __import__("json").loads((folder / scenes.MANIFEST).read_text())
    assert len(found) == len(manifest["images"]) > 12           # two to five objects a scene, a few covered
    assert set(found.classes) <= set(scenes.CLASSES[1:])
    for path, label in zip(found.paths, found.labels):
        assert path.parent.name == found.classes[label]
        with Image.open(path) as im:
            assert im.size == (scenes.OBJECT_SIZE, scenes.OBJECT_SIZE)
    # each crop is of an object of its class: rebuild scene 0's objects and compare
    objects = []
    image, labels = scenes.generate_scene(np.random.default_rng((3, scenes.SPLITS["train"], 0)), objects)
    kept = scenes.object_crops(image, labels, objects)
    names = sorted((n for n in manifest["images"] if "scene_00000_" in n), key=lambda n: int(n[-5]))
    assert [n.split("/")[0] for n in names] == [scenes.CLASSES[c] for c, _ in kept]
    assert scenes.ensure_objects(12, seed=3, root=tmp_path, workers=1) == folder    # reused
    with pytest.raises(ValueError, match="n_scenes"):
        scenes.ensure_objects(0, root=tmp_path)
