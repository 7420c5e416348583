"""Training data: every format on tiny files made here, value range, padding, errors, and the batch stream."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddgan.training.data import BatchStream, build_dataset, detect_kind
from ddgan.training.datasets import ArrayImageDataset, DataError, StackedMNIST

SHARED_MNIST = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "mnist.npz"


def write_npz(path: Path, count: int = 6, size: int = 28, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, size, size), dtype=np.uint8)
    labels = (np.arange(count) % 10).astype(np.uint8)
    np.savez(path, x_train=images, y_train=labels, x_test=images[:2], y_test=labels[:2])
    return images, labels


def test_npz_pads_28_to_32_with_minus_one_like_official_pad2(tmp_path: Path) -> None:
    images, labels = write_npz(tmp_path / "m.npz")
    dataset = build_dataset(tmp_path / "m.npz", 32, 1)
    assert len(dataset) == 6 and dataset.labels.tolist() == labels.tolist()
    item = dataset[3]
    assert item.shape == (1, 32, 32) and item.dtype == torch.float32
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert torch.all(item[0][border] == -1.0)
    expected = torch.from_numpy(images[3].astype(np.float32)) / 127.5 - 1.0
    torch.testing.assert_close(item[0, 2:30, 2:30], expected)
    assert item.min() >= -1.0 and item.max() <= 1.0


def test_npz_test_split_channels_and_resize(tmp_path: Path) -> None:
    images, _ = write_npz(tmp_path / "m.npz")
    test = build_dataset(tmp_path / "m.npz", 28, 3, train=False)
    assert len(test) == 2 and test[1].shape == (3, 28, 28)
    torch.testing.assert_close(test[1][0], test[1][2])  # gray repeated into R, G, B
    torch.testing.assert_close(test[1][0], torch.from_numpy(images[1].astype(np.float32)) / 127.5 - 1.0)
    assert build_dataset(tmp_path / "m.npz", 16, 1)[0].shape == (1, 16, 16)


def test_npz_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        build_dataset(tmp_path / "missing.npz", 32, 1)
    np.savez(tmp_path / "wrong_keys.npz", images=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(DataError, match="x_train"):
        build_dataset(tmp_path / "wrong_keys.npz", 32, 1)
    np.savez(tmp_path / "float.npz", x_train=np.zeros((2, 28, 28), np.float32))
    with pytest.raises(DataError, match="uint8"):
        build_dataset(tmp_path / "float.npz", 32, 1)
    np.savez(tmp_path / "shape.npz", x_train=np.zeros((2, 28, 28, 5), np.uint8))
    with pytest.raises(DataError, match="shape|must be"):
        build_dataset(tmp_path / "shape.npz", 32, 1)
    (tmp_path / "garbage.npz").write_bytes(b"not a zip archive")
    with pytest.raises(DataError, match="not a readable .npz"):
        build_dataset(tmp_path / "garbage.npz", 32, 1)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="unsupported data file"):
        build_dataset(tmp_path / "notes.txt", 32, 1)
    with pytest.raises(DataError, match="channels"):
        build_dataset(tmp_path / "wrong_keys.npz", 32, 2)
    with pytest.raises(DataError, match="unknown dataset kind"):
        build_dataset(tmp_path / "wrong_keys.npz", 32, 1, dataset="imagenet")


def test_image_folder_tree_of_png_and_jpeg(tmp_path: Path) -> None:
    root = tmp_path / "images"
    (root / "a" / "b").mkdir(parents=True)
    wide = np.zeros((32, 64, 3), np.uint8)
    wide[:, :8] = 255  # left eighth white: the center crop must cut it away
    Image.fromarray(wide).save(root / "a" / "wide.png")
    Image.fromarray(np.full((20, 20), 255, np.uint8), "L").save(root / "a" / "b" / "gray.PNG")
    Image.fromarray(np.full((16, 16, 4), 255, np.uint8), "RGBA").save(root / "rgba.png")
    Image.fromarray(np.full((24, 24, 3), 128, np.uint8)).save(root / "photo.jpg", quality=100)
    (root / "readme.txt").write_text("not an image")
    dataset = build_dataset(root, 16, 3)
    assert detect_kind(root) == "image_folder" and len(dataset) == 4
    by_name = {path.name: index for index, path in enumerate(dataset.files)}
    assert torch.all(dataset[by_name["wide.png"]] == -1.0)
    assert torch.all(dataset[by_name["gray.PNG"]] == 1.0)
    assert dataset[by_name["rgba.png"]].shape == (3, 16, 16)
    assert abs(float(dataset[by_name["photo.jpg"]].mean()) - (128 / 127.5 - 1)) < 0.02
    assert build_dataset(root, 8, 1)[0].shape == (1, 8, 8)


def test_image_folder_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files"):
        build_dataset(tmp_path / "empty", 32, 3)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.png").write_bytes(b"\x89PNG but not really")
    with pytest.raises(DataError, match="cannot be read as an image"):
        build_dataset(tmp_path / "broken", 32, 3)


def write_cifar_batch(path: Path, count: int, seed: int, protocol: int = 2) -> np.ndarray:
    data = np.random.default_rng(seed).integers(0, 256, (count, 3072), dtype=np.uint8)
    batch = {b"batch_label": b"fake", b"labels": [i % 10 for i in range(count)], b"data": data}
    path.write_bytes(pickle.dumps(batch, protocol=protocol))
    return data


def test_cifar10_batches(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    first = write_cifar_batch(folder / "data_batch_1", 3, 0, protocol=2)
    write_cifar_batch(folder / "data_batch_2", 2, 1, protocol=pickle.HIGHEST_PROTOCOL)
    write_cifar_batch(folder / "test_batch", 4, 2)
    train = build_dataset(tmp_path, 32, 3)  # the parent of the batches folder works too
    assert detect_kind(tmp_path) == "cifar10" and len(train) == 5
    assert train.labels.tolist() == [0, 1, 2, 0, 1]
    item = train[1]
    # rows are channel-major: value (c, h, w) sits at column c*1024 + h*32 + w
    for c, h, w in ((0, 0, 0), (1, 5, 7), (2, 31, 30)):
        assert float(item[c, h, w]) == pytest.approx(first[1, c * 1024 + h * 32 + w] / 127.5 - 1.0)
    assert len(build_dataset(folder, 32, 3, train=False)) == 4
    assert build_dataset(folder, 16, 1)[0].shape == (1, 16, 16)


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_cifar_refuses_a_malicious_pickle(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({b"data": _Exploit(marker), b"labels": []}))
    with pytest.raises(DataError, match="refusing to load global"):
        build_dataset(tmp_path, 32, 3)
    assert not marker.exists()
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({"data": Path("/etc"), "labels": []}))
    with pytest.raises(DataError, match="refusing"):
        build_dataset(tmp_path, 32, 3, dataset="cifar10")


def test_cifar_wrong_content(tmp_path: Path) -> None:
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(DataError, match=r"\(N, 3072\)"):
        build_dataset(tmp_path, 32, 3)
    (tmp_path / "data_batch_1").write_bytes(b"\x80\x04truncated")
    with pytest.raises(DataError, match="not a CIFAR-10 python batch"):
        build_dataset(tmp_path, 32, 3)


def test_stacked_mnist_channels_are_three_digits_with_1000_class_labels(tmp_path: Path) -> None:
    # digit i is a constant image of value 20*i, so each channel tells which digit it holds
    digits = np.stack([np.full((28, 28), 20 * i, np.uint8) for i in range(10)])
    np.savez(tmp_path / "m.npz", x_train=digits, y_train=np.arange(10, dtype=np.uint8))
    dataset = build_dataset(tmp_path / "m.npz", 32, 3, dataset="stacked_mnist", seed=7)
    assert isinstance(dataset, StackedMNIST) and len(dataset) == 20
    for index in range(20):
        item = dataset[index]
        assert item.shape == (3, 32, 32) and torch.all(item[:, :2] == -1.0)
        r, g, b = ((item[:, 16, 16] + 1.0) * 127.5 / 20).round().long().tolist()
        assert int(dataset.labels[index]) == 100 * r + 10 * g + b
    # each channel uses every digit exactly twice (two permutations of the set)
    for channel in range(3):
        assert sorted(dataset.digit_indices[:, channel].tolist()) == sorted(list(range(10)) * 2)
    again = build_dataset(tmp_path / "m.npz", 32, 3, dataset="stacked_mnist", seed=7)
    assert torch.equal(again.labels, dataset.labels)
    assert not torch.equal(
        build_dataset(tmp_path / "m.npz", 32, 3, dataset="stacked_mnist", seed=8).labels, dataset.labels
    )
    with pytest.raises(DataError, match="3 channels"):
        build_dataset(tmp_path / "m.npz", 32, 1, dataset="stacked_mnist")


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_MNIST.is_file(), reason="../shared/data/mnist.npz not present")
def test_shared_mnist_and_stacked_mnist_sizes() -> None:
    mnist = build_dataset(SHARED_MNIST, 32, 1)
    assert len(mnist) == 60000 and mnist[0].shape == (1, 32, 32)
    stacked = build_dataset(SHARED_MNIST, 32, 3, dataset="stacked_mnist")
    assert len(stacked) == 120000 and stacked.labels.unique().numel() == 1000


def test_lmdb_nvae_format(tmp_path: Path) -> None:
    lmdb = pytest.importorskip("lmdb")
    images = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    env = lmdb.open(str(tmp_path / "train.lmdb"), map_size=1 << 20)
    with env.begin(write=True) as txn:
        for index, image in enumerate(images):
            txn.put(str(index).encode(), image.tobytes())
    env.close()
    dataset = build_dataset(tmp_path, 8, 3)
    assert detect_kind(tmp_path) == "lmdb" and len(dataset) == 3
    torch.testing.assert_close(dataset[2], torch.from_numpy(images[2]).permute(2, 0, 1).float() / 127.5 - 1.0)
    assert build_dataset(tmp_path, 4, 1, dataset="lmdb")[0].shape == (1, 4, 4)
    with pytest.raises(DataError, match="validation.lmdb"):
        build_dataset(tmp_path, 8, 3, dataset="lmdb", train=False)


def test_batch_stream_is_resumable_sharded_and_covers_epochs() -> None:
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 1, 2, 2).contiguous()
    dataset = ArrayImageDataset(images)
    stream = BatchStream(dataset, 3, seed=5)
    assert stream.steps_per_epoch == 3
    first = [next_batch for _, next_batch in zip(range(7), stream.batches(0), strict=False)]
    ids = [((b[:, 0, 0, 0] + 1) * 127.5).round().long().tolist() for b in first]
    epoch0 = sum(ids[:3], [])
    assert len(set(epoch0)) == 9  # drop_last: 9 distinct of the 10 images
    resumed = [b for _, b in zip(range(3), stream.batches(4), strict=False)]
    for a, b in zip(first[4:], resumed, strict=True):
        assert torch.equal(a, b)
    ranks = [BatchStream(dataset, 2, seed=5, rank=r, world_size=2).epoch_plan(0)[0] for r in (0, 1)]
    assert set(ranks[0].flatten().tolist()).isdisjoint(ranks[1].flatten().tolist())
    with pytest.raises(DataError, match="fewer than one global batch"):
        BatchStream(dataset, 11)


def _decode(batch: torch.Tensor) -> list[tuple[int, bool]]:
    """(image index, flipped) of each (1, 1, 2) image whose pixels are [i, 200 + i] unflipped."""
    pixels = ((batch[:, 0, 0] + 1) * 127.5).round().long().tolist()
    return [(left, False) if left < 200 else (right, True) for left, right in pixels]


def test_flips_are_a_function_of_seed_rank_and_step_not_of_the_global_rng() -> None:
    images = torch.stack([torch.tensor([[[i, 200 + i]]], dtype=torch.uint8) for i in range(16)])
    dataset = ArrayImageDataset(images)
    stream = BatchStream(dataset, 4, seed=3, hflip=True)  # 4 steps per epoch

    torch.manual_seed(0)
    run = [_decode(b) for _, b in zip(range(12), stream.batches(0), strict=False)]
    torch.manual_seed(1)  # a resumed process: other global RNG state, starting at step 6
    resumed = [_decode(b) for _, b in zip(range(6), stream.batches(6), strict=False)]
    assert resumed == run[6:]
    flips = [flip for batch in run for _, flip in batch]
    assert 0 < sum(flips) < len(flips)  # some images mirrored, some not
    assert [_decode(b) for _, b in zip(range(12), stream.batches(0), strict=False)] == run
    order, mask = stream.epoch_plan(1)
    assert run[4:8] == [list(zip(o.tolist(), m.tolist(), strict=True)) for o, m in zip(order, mask, strict=True)]
    # each rank reads, and flips, its own share of the epoch's plan
    for rank in (0, 1):
        sharded = BatchStream(dataset, 2, seed=3, rank=rank, world_size=2, hflip=True)
        order, mask = sharded.epoch_plan(0)
        expected = [list(zip(o.tolist(), m.tolist(), strict=True)) for o, m in zip(order, mask, strict=True)]
        assert [_decode(b) for _, b in zip(range(4), sharded.batches(0), strict=False)] == expected
    plain = BatchStream(dataset, 4, seed=3)
    assert not any(flip for _, b in zip(range(8), plain.batches(0), strict=False) for _, flip in _decode(b))
    # items read from the dataset are never flipped, whatever the global RNG
    assert all(_decode(dataset[i][None]) == [(i, False)] for i in range(16) for _ in range(3))
