"""Hugging Face data sets (hf:) and Flower Datasets partitioners (flwr:), offline: a small
DatasetDict built and saved locally, loaded by path; the hub loading code is the same call
(``datasets.load_dataset``) with a name instead of a folder."""

from __future__ import annotations

import numpy as np
import pytest

from rayfl.data import load_dataset, partition
from rayfl.errors import ConfigError, DataError

datasets = pytest.importorskip("datasets")
pytest.importorskip("flwr_datasets")

N_TRAIN, N_TEST, WRITERS = 240, 60, 12


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A DatasetDict like MNIST's on the hub (PIL images, a ClassLabel) plus a writer column."""
    from PIL import Image

    rng = np.random.default_rng(0)

    def split(n):
        labels = rng.integers(0, 4, size=n)
        images = [
            Image.fromarray((rng.random((8, 8)) * 60 + 40 * y).astype(np.uint8)) for y in labels
        ]
        return datasets.Dataset.from_dict(
            {"img": images, "digit": labels.tolist(), "writer_id": (np.arange(n) % WRITERS).tolist()},
            features=datasets.Features(
                {"img": datasets.Image(), "digit": datasets.ClassLabel(names=list("abcd")),
                 "writer_id": datasets.Value("int64")}
            ),
        )  # fmt: skip

    folder = tmp_path_factory.mktemp("hf") / "toy"
    datasets.DatasetDict({"train": split(N_TRAIN), "test": split(N_TEST)}).save_to_disk(str(folder))
    return folder


PARAMS = {"image_column": "img", "label_column": "digit", "keep_columns": ["writer_id"]}


def test_an_hf_set_becomes_a_rayfl_dataset(hf_folder):
    ds = load_dataset(f"hf:{hf_folder}", params=PARAMS)
    assert ds.x_train.shape == (N_TRAIN, 1, 8, 8) and ds.x_train.dtype == np.uint8
    assert ds.x_test.shape == (N_TEST, 1, 8, 8) and ds.y_train.dtype == np.int64
    assert ds.num_classes == 4  # from the ClassLabel
    assert ds.columns["writer_id"].tolist() == (np.arange(N_TRAIN) % WRITERS).tolist()
    assert 0 < ds.mean[0] < 1 and 0 < ds.std[0] < 1
    pixels = ds.x_train.astype(np.float64) / 255
    assert ds.mean[0] == pytest.approx(pixels.mean()) and ds.std[0] == pytest.approx(pixels.std())


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({**PARAMS, "image_column": "image"}, r"data.dataset_params.image_column='image': .* has no such column \(it has img, digit, writer_id\)"),
        ({**PARAMS, "test_split": "validation"}, r"data.dataset_params.test_split='validation': .* has no such split"),
        ({**PARAMS, "label_colum": "digit"}, r"data.dataset_params.label_colum is not a parameter of load_hf: did you mean 'label_column'"),
    ],
)  # fmt: skip
def test_bad_hf_params_are_one_line_errors(hf_folder, params, message):
    with pytest.raises((DataError, ConfigError), match=message) as info:
        load_dataset(f"hf:{hf_folder}", params=params)
    assert "\n" not in str(info.value)


def test_an_hf_name_that_cannot_load_is_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # this machine has no hub; fail fast, not retry
    with pytest.raises(
        DataError, match=r"data.dataset='hf:no-such-user/no-such-set' cannot be loaded"
    ) as info:
        load_dataset("hf:no-such-user/no-such-set")
    assert "\n" not in str(info.value)


def test_flwr_natural_id_split_by_writer(hf_folder):
    ds = load_dataset(f"hf:{hf_folder}", params=PARAMS)
    p = partition(ds.y_train, "flwr:NaturalIdPartitioner", WRITERS, seed=0,
                  params={"partition_by": "writer_id"}, columns=ds.columns)  # fmt: skip
    assert p.num_clients == WRITERS
    for i in range(WRITERS):  # each client holds exactly one writer's samples
        assert len(set(ds.columns["writer_id"][p.client(i)].tolist())) == 1
    assert sorted(p.indices.tolist()) == list(range(N_TRAIN))
    with pytest.raises(
        DataError,
        match=f"made {WRITERS} partitions, not data.num_clients=5: set data.num_clients={WRITERS}",
    ):
        partition(ds.y_train, "flwr:NaturalIdPartitioner", 5, seed=0,
                  params={"partition_by": "writer_id"}, columns=ds.columns)  # fmt: skip


def test_flwr_errors_name_our_fields():
    labels = np.repeat(np.arange(10), 60)
    with pytest.raises(ConfigError, match="did you mean 'flwr:DirichletPartitioner'"):
        partition(labels, "flwr:DirichletPartitionr", 10, seed=0)
    with pytest.raises(
        ConfigError,
        match="data.partition_params.alpah is not a parameter of flwr:DirichletPartitioner: did you mean 'alpha'",
    ):
        partition(labels, "flwr:DirichletPartitioner", 10, seed=0, params={"alpah": 1.0})
    with pytest.raises(
        DataError,
        match=r"data.partition='flwr:DirichletPartitioner' with data.partition_params=\{'alpha': -1\} failed: Alpha",
    ) as info:
        partition(labels, "flwr:DirichletPartitioner", 10, seed=0, params={"alpha": -1})
    assert "\n" not in str(info.value)


def _label_skew(labels, p):
    """Mean share of each client's dominant class, and mean entropy of its class mix."""
    dominant, entropy = [], []
    for i in range(p.num_clients):
        share = np.bincount(labels[p.client(i)], minlength=10) / p.client(i).size
        dominant.append(share.max())
        nz = share[share > 0]
        entropy.append(-(nz * np.log(nz)).sum())
    return np.mean(dominant), np.mean(entropy)


def test_our_dirichlet_matches_flowers_statistics():
    """Both draw each class's client shares from Dir(alpha): the label skew they give agrees
    within sampling noise (measured over 5 seeds: dominant share 0.38 / 0.37, entropy 1.64 /
    1.66 at alpha = 0.5, 50 clients, 10 classes)."""
    labels = np.repeat(np.arange(10), 600)
    ours, flowers = [], []
    for seed in range(5):
        ours.append(_label_skew(labels, partition(labels, "dirichlet", 50, seed, alpha=0.5)))
        theirs = partition(labels, "flwr:DirichletPartitioner", 50, seed,
                           params={"alpha": 0.5, "min_partition_size": 0, "self_balancing": False})  # fmt: skip
        flowers.append(_label_skew(labels, theirs))
    (dom_a, ent_a), (dom_b, ent_b) = np.mean(ours, axis=0), np.mean(flowers, axis=0)
    assert abs(dom_a - dom_b) < 0.05 and abs(ent_a - ent_b) < 0.12
    # and both are far from IID (dominant share 0.1, entropy ln 10 = 2.30)
    assert dom_a > 0.25 and dom_b > 0.25 and ent_a < 2.0 and ent_b < 2.0


def test_a_run_on_an_hf_set_split_by_writer(ray_session, hf_folder, tmp_path):
    import rayfl

    sets = [
        f"data.dataset=hf:{hf_folder}",
        "data.dataset_params={image_column: img, label_column: digit, keep_columns: [writer_id]}",
        "data.partition=flwr:NaturalIdPartitioner", "data.partition_params={partition_by: writer_id}",
        f"data.num_clients={WRITERS}", "iterations=6", "aggregation.k=3", "client.num_workers=2",
        "eval.every=3",
    ]  # fmt: skip
    result = rayfl.run("tiny", overrides=sets, output=tmp_path / "run", progress=False)
    assert result.summary["status"] == "finished" and result.summary["iterations"] == 6
    assert 0.0 <= result.final_accuracy <= 1.0


def test_an_hf_text_set_becomes_utf8_byte_rows(tmp_path):
    texts = ["good movie", "bad", "ça va très bien, merci"]
    split = datasets.Dataset.from_dict({"text": texts, "label": [1, 0, 1]})
    datasets.DatasetDict({"train": split, "test": split}).save_to_disk(str(tmp_path / "t"))
    ds = load_dataset(f"hf:{tmp_path / 't'}", params={"text_column": "text", "max_length": 12})
    assert ds.x_train.shape == (3, 12) and ds.x_train.dtype == np.uint8 and ds.num_classes == 2
    assert bytes(ds.x_train[0]).rstrip(b"\0").decode() == "good movie"
    assert bytes(ds.x_train[2]) == "ça va très bien, merci".encode()[:12]  # cut at max_length
    with pytest.raises(
        DataError, match=r"data.dataset_params.text_column='body': .* has no such column"
    ):
        load_dataset(f"hf:{tmp_path / 't'}", params={"text_column": "body"})
