"""The probe's scenes: image and label map stay aligned through the crop and both resizes."""

import torch

from pixpro_fast import probe_data


def test_scene_loading_keeps_image_and_labels_aligned(tmp_path):
    """A wide scene whose grey level encodes its label: after the centre crop and the two
    resizes, each label cell must agree with the image pixel at its centre."""
    from PIL import Image
    w, h = 100, 60
    classes = (torch.arange(w) // 25 % 4).expand(h, w).to(torch.uint8)      # vertical bands, 25 px wide
    Image.fromarray((classes * 60).numpy()).convert("RGB").save(tmp_path / "s.png")
    Image.fromarray(classes.numpy(), "L").save(tmp_path / "s.labels.png")
    image, labels = probe_data.load_scene(tmp_path / "s.png", 32, 8)
    assert image.shape == (32, 32, 3) and labels.shape == (8, 8)
    decoded = torch.tensor(image[2::4, 2::4, 0] / 60).round()
    agree = (decoded == torch.tensor(labels)).float().mean()
    assert agree > 0.85, (decoded, labels)
    # the window is the centre square (x in [20, 80)): a band boundary at x = 50 lies mid-window
    assert set(labels[0].tolist()) == {0, 1, 2, 3} and labels[0, 3] == 1 and labels[0, 4] == 2
