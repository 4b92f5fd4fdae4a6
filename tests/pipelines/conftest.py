import pytest

from sample_data import damaged_class_folder


@pytest.fixture(scope="session")
def folder(tmp_path_factory):
    """The damaged ImageFolder of :func:`sample_data.damaged_class_folder` (24 readable JPEGs in
    two classes, two unreadable files), shared by the FFCV loader's and writer's tests."""
    return damaged_class_folder(tmp_path_factory.mktemp("class_folder") / "data")


@pytest.fixture(scope="session")
def folder_beton(folder, tmp_path_factory):
    """``folder`` written to a .beton by the writer's command line (read-only for its users)."""
    from pipelines import ffcv_writer
    out = tmp_path_factory.mktemp("class_beton") / "folder.beton"
    assert ffcv_writer.main(["--data", str(folder), "--out", str(out), "--num-workers", "2", "--quiet"]) == 0
    return out
