"""An image folder's epoch order is a function of (seed, epoch) alone."""

import numpy as np
import pytest

from keras_vitmsn.images.folders import ImageFolder
from keras_vitmsn.images.folders import write_toy_image_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    return ImageFolder(write_toy_image_folder(str(root), num_classes=2, per_class=5, size=8))


def labels_of_epoch(data):
    return np.concatenate([data[i][1] for i in range(len(data))])


def test_an_epochs_order_depends_only_on_the_seed_and_the_epoch(folder):
    walked = folder.as_dataset((8, 8), batch_size=4, shuffle=True, seed=3)
    orders = []
    for _ in range(4):
        labels_of_epoch(walked)  # batches read, and read again, change nothing
        orders.append(walked.order().copy())
        walked.on_epoch_end()
    # A resumed run jumps to its epoch: it sees the order of a run that walked there.
    jumped = folder.as_dataset((8, 8), batch_size=4, shuffle=True, seed=3)
    for epoch in (2, 0, 3, 1):
        jumped.set_epoch(epoch)
        np.testing.assert_array_equal(jumped.order(), orders[epoch])
        np.testing.assert_array_equal(labels_of_epoch(jumped), folder.labels[orders[epoch]])
    # A new permutation every epoch, another one for another seed.
    assert all(sorted(order) == list(range(len(folder))) for order in orders)
    assert len({tuple(order) for order in orders}) == len(orders)
    other = folder.as_dataset((8, 8), batch_size=4, shuffle=True, seed=4)
    assert not np.array_equal(other.order(), orders[0])


def test_without_shuffle_the_order_is_the_folders(folder):
    data = folder.as_dataset((8, 8), batch_size=4)
    data.on_epoch_end()
    np.testing.assert_array_equal(data.order(), np.arange(len(folder)))


def test_a_bad_epoch_is_refused(folder):
    data = folder.as_dataset((8, 8), batch_size=4, shuffle=True)
    with pytest.raises(ValueError, match="`epoch` must be a non-negative int; got -1"):
        data.set_epoch(-1)
