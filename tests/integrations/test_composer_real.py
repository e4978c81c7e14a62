"""ObjectStoreLogger in a real Composer ``Trainer``: tiny model, CPU, 2 epochs, 1 checkpoint each.

Composer is installed beside the project's torch by ``.ci/run`` (see
``tests/composer-requirements.txt`` and ``tests/_composer_shim.py``). Without it these tests
skip on a developer's machine and fail when ``CI`` is set.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from artifact_uploader import (
    ObjectStoreLogger,
    RetryPolicy,
    UploadFailedError,
    download_checkpoint,
    latest_checkpoint,
    list_checkpoints,
)
from tests._composer_shim import import_composer
from tests.servers.fault_proxy import FaultProxy
from tests.servers.moto import MotoServer, list_s3_keys, read_s3_object

# A Trainer run takes seconds; on a loaded 2-core machine several times that.
pytestmark = pytest.mark.timeout(300)

CKPTS = "ckpts"
EP1 = f"{CKPTS}/ep1-ba2-rank0.pt"
EP2 = f"{CKPTS}/ep2-ba4-rank0.pt"
LATEST = f"{CKPTS}/latest-rank0.pt"
TEMPLATE = "{run_name}/rank_{rank}/{artifact_name}"


@pytest.fixture(scope="module")
def composer() -> Any:
    return import_composer()


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in a folder of the test's own: Composer names remote checkpoints after save_folder."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def make_trainer(
    composer: Any,
    logger: ObjectStoreLogger,
    *,
    run_name: str = "run1",
    max_duration: str = "2ep",
    **kwargs: Any,
) -> Any:
    """A real Trainer: a linear classifier on 16 random samples, 2 batches an epoch."""
    import torch
    from composer.models import ComposerClassifier
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    data = TensorDataset(torch.randn(16, 4), torch.randint(0, 2, (16,)))
    model = ComposerClassifier(torch.nn.Linear(4, 2), num_classes=2)
    return composer.Trainer(
        model=model,
        train_dataloader=DataLoader(data, batch_size=8),
        optimizers=torch.optim.SGD(model.parameters(), lr=0.1),
        max_duration=max_duration,
        save_folder=CKPTS,
        save_interval="1ep",
        loggers=[logger],
        run_name=run_name,
        device="cpu",
        progress_bar=False,
        log_to_console=False,
        **kwargs,
    )


def fit_and_close(trainer: Any) -> None:
    try:
        trainer.fit()
    finally:
        trainer.close()


class Store:
    """Reads what landed in a file:// store or an S3 bucket."""

    def __init__(self, kind: str, root: Path, moto_server: MotoServer, bucket: str) -> None:
        self.kind = kind
        self.root = root
        self.bucket = bucket
        self.client = moto_server.client("s3") if kind == "s3" else None
        self.options = moto_server.options() if kind == "s3" else None

    def logger(self, **kwargs: Any) -> ObjectStoreLogger:
        if self.kind == "s3":
            return ObjectStoreLogger("s3", self.bucket, provider_kwargs=self.options, **kwargs)
        return ObjectStoreLogger("file", str(self.root), **kwargs)

    def read(self, name: str) -> bytes:
        if self.client is not None:
            return read_s3_object(self.client, self.bucket, name)
        return (self.root / name).read_bytes()

    def names(self) -> set[str]:
        if self.client is not None:
            return set(list_s3_keys(self.client, self.bucket))
        return {p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file()}


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "s3":
        moto_server: MotoServer = request.getfixturevalue("moto_server")
        bucket: str = request.getfixturevalue("s3_bucket")
        yield Store("s3", tmp_path / "unused", moto_server, bucket)
    else:
        yield Store("file", tmp_path / "store", None, "")  # type: ignore[arg-type]


@pytest.mark.parametrize("use_procs", [False, True], ids=["thread", "procs"])
def test_checkpoints_and_latest_symlink_land_byte_identical(
    composer: Any, workdir: Path, store: Store, use_procs: bool
) -> None:
    from composer.loggers import LoggerDestination

    logger = store.logger(use_procs=use_procs)
    # Composer runs it as one of its logger destinations, not as a plain callback.
    assert isinstance(logger, LoggerDestination)
    trainer = make_trainer(composer, logger)
    fit_and_close(trainer)

    for name in (EP1, EP2):
        assert store.read(name) == (workdir / name).read_bytes(), name
    # Composer's latest symlink, stored as the library's symlink object: its text is the
    # stored object name of the last checkpoint.
    assert store.read(LATEST + ".symlink").decode() == EP2
    assert store.names() == {EP1, EP2, LATEST + ".symlink"}


def test_logger_state_round_trips_through_a_composer_checkpoint(
    composer: Any, workdir: Path, store_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    trainer = make_trainer(composer, ObjectStoreLogger("file", str(store_dir)))
    fit_and_close(trainer)
    saved = torch.load(store_dir / EP2, map_location="cpu", weights_only=False)
    logger_state = saved["state"]["callbacks"]["ObjectStoreLogger"]
    assert logger_state == {"run_name": "run1", "object_name": "{artifact_name}"}

    loaded: list[Any] = []
    original = ObjectStoreLogger.load_state_dict

    def recording(self: ObjectStoreLogger, state: Any) -> None:
        loaded.append(state)
        original(self, state)

    monkeypatch.setattr(ObjectStoreLogger, "load_state_dict", recording)
    # Loading the uploaded checkpoint hands the logger's state back to a new logger.
    reloaded = make_trainer(
        composer,
        ObjectStoreLogger("file", str(store_dir / "second")),
        run_name="run2",
        load_path=str(store_dir / EP2),
    )
    reloaded.close()
    assert loaded == [logger_state]


@pytest.mark.parametrize("use_procs", [False, True], ids=["thread", "procs"])
def test_a_failed_final_checkpoint_fails_fit_and_keeps_the_old_latest(
    composer: Any,
    workdir: Path,
    moto_server: MotoServer,
    s3_bucket: str,
    fault_proxy: FaultProxy,
    use_procs: bool,
) -> None:
    # Every request for the final checkpoint's key is refused (403), for good.
    fault_proxy.deny("ep2-ba4-rank0.pt")
    logger = ObjectStoreLogger(
        "s3",
        s3_bucket,
        provider_kwargs=moto_server.options(endpoint_url=fault_proxy.endpoint_url),
        retry=RetryPolicy(attempts=2, base_delay=0.0, max_delay=0.0),
        use_procs=use_procs,
    )
    trainer = make_trainer(composer, logger)
    with pytest.raises(UploadFailedError) as info:
        trainer.fit()
    trainer.close()
    assert EP2 in str(info.value)
    client = moto_server.client("s3")
    # The first checkpoint and its symlink landed; the latest symlink was not moved to the
    # checkpoint that never arrived.
    assert set(list_s3_keys(client, s3_bucket)) == {EP1, LATEST + ".symlink"}
    assert read_s3_object(client, s3_bucket, LATEST + ".symlink").decode() == EP1
    assert read_s3_object(client, s3_bucket, EP1) == (workdir / EP1).read_bytes()


def test_templated_object_names_symlink_points_at_the_stored_object(
    composer: Any, workdir: Path, store: Store, tmp_path: Path
) -> None:
    logger = store.logger(object_name=TEMPLATE)
    fit_and_close(make_trainer(composer, logger, run_name="tmpl"))

    prefix = "tmpl/rank_0/"
    assert store.names() == {prefix + EP1, prefix + EP2, prefix + LATEST + ".symlink"}
    target = store.read(prefix + LATEST + ".symlink").decode()
    assert target == prefix + EP2
    assert store.read(target) == (workdir / EP2).read_bytes()

    # Read back by the name Composer logged it under: the template applies, the symlink is
    # followed to the stored checkpoint.
    reader = store.logger(object_name=TEMPLATE, run_name="tmpl")
    try:
        reader.download_file(LATEST, str(tmp_path / "latest.pt"))
        # Composer's own get_file on the symlink name: it reads the symlink's text (the stored
        # name) and asks the logger for that name, which is found as it is.
        from composer.utils import get_file

        get_file(LATEST + ".symlink", str(tmp_path / "via-get-file.pt"), object_store=reader)
    finally:
        reader.close()
    assert (tmp_path / "latest.pt").read_bytes() == (workdir / EP2).read_bytes()
    assert (tmp_path / "via-get-file.pt").read_bytes() == (workdir / EP2).read_bytes()


@pytest.mark.parametrize("object_name", ["{artifact_name}", TEMPLATE], ids=["plain", "templated"])
def test_autoresume_from_the_store_after_the_save_folder_is_gone(
    composer: Any, workdir: Path, store: Store, object_name: str
) -> None:
    import torch

    first = make_trainer(
        composer, store.logger(object_name=object_name), max_duration="1ep", autoresume=True
    )
    fit_and_close(first)
    weights_after_epoch_1 = {k: v.clone() for k, v in first.state.model.state_dict().items()}
    shutil.rmtree(workdir / CKPTS)

    # The logger is the only copy left: autoresume fetches the latest checkpoint through it.
    second = make_trainer(
        composer, store.logger(object_name=object_name), max_duration="2ep", autoresume=True
    )
    try:
        assert int(second.state.timestamp.epoch) == 1
        for key, value in second.state.model.state_dict().items():
            assert torch.equal(value, weights_after_epoch_1[key]), key
        second.fit()
    finally:
        second.close()
    assert int(second.state.timestamp.epoch) == 2
    prefix = "run1/rank_0/" if object_name == TEMPLATE else ""
    assert store.read(prefix + EP2) == (workdir / EP2).read_bytes()
    assert store.read(prefix + LATEST + ".symlink").decode() == prefix + EP2


def test_every_logger_destination_call_is_accepted(
    composer: Any, workdir: Path, store_dir: Path
) -> None:
    import numpy as np
    from composer.core import Callback
    from composer.loggers import LoggerDestination

    logger = ObjectStoreLogger("file", str(store_dir))
    trainer = make_trainer(composer, logger, max_duration="1ep")
    try:
        # Composer's Logger fans these out to every destination (the Generate and
        # ImageVisualizer callbacks call them on each).
        trainer.logger.log_table(columns=["a"], rows=[[1]], name="t", step=1)
        trainer.logger.log_images(np.zeros((1, 4, 4, 3)), name="img", channels_last=True)
        trainer.logger.log_traces({"x": 1})
        trainer.fit()
    finally:
        trainer.close()
    # Hooks this class does not define come from Composer, not from a guess.
    assert type(logger).after_forward is Callback.after_forward
    assert isinstance(logger, LoggerDestination)
    assert type(logger).__qualname__ == "ObjectStoreLogger"
    assert (store_dir / EP1).read_bytes() == (workdir / EP1).read_bytes()


def test_download_file_and_get_file_artifact(
    composer: Any, workdir: Path, store_dir: Path, tmp_path: Path
) -> None:
    fit_and_close(make_trainer(composer, ObjectStoreLogger("file", str(store_dir))))
    reader = ObjectStoreLogger("file", str(store_dir))
    try:
        dest = tmp_path / "out"
        dest.mkdir()
        reader.download_file(EP1, str(dest / "a.pt"))
        assert (dest / "a.pt").read_bytes() == (workdir / EP1).read_bytes()
        reader.get_file_artifact(LATEST, str(dest / "b.pt"))
        assert (dest / "b.pt").read_bytes() == (workdir / EP2).read_bytes()
        # Asking for the symlink itself gives its text, as Composer's get_file expects.
        reader.download_file(LATEST + ".symlink", str(dest / "c.symlink"))
        assert (dest / "c.symlink").read_text() == EP2
        with pytest.raises(FileExistsError):
            reader.download_file(EP1, str(dest / "a.pt"))
        reader.download_file(EP2, str(dest / "a.pt"), overwrite=True, progress_bar=False)
        assert (dest / "a.pt").read_bytes() == (workdir / EP2).read_bytes()
        with pytest.raises(FileNotFoundError):
            reader.download_file("ckpts/missing.pt", str(dest / "m.pt"))
        assert not (dest / "m.pt").exists()
    finally:
        reader.close()


# -- commit_checkpoints: each checkpoint a commit, the latest symlink moved after it ----------


def steps(logger: ObjectStoreLogger, store: Store) -> list[int]:
    root = logger.checkpoint_root_uri()
    assert root is not None
    return [c.step for c in list_checkpoints(root, provider_kwargs=store.options)]


def test_composer_checkpoints_are_commits_and_autoresume_follows_latest(
    composer: Any, workdir: Path, store: Store, tmp_path: Path
) -> None:
    logger = store.logger(commit_checkpoints=CKPTS)
    fit_and_close(make_trainer(composer, logger))

    assert steps(logger, store) == [4, 2]
    root = logger.checkpoint_root_uri()
    assert root is not None
    latest = latest_checkpoint(root, provider_kwargs=store.options)
    assert latest is not None and latest.files.keys() == {"ep2-ba4-rank0.pt"}
    # The latest symlink names the checkpoint inside its committed location.
    target = store.read(LATEST + ".symlink").decode()
    assert target == f"{CKPTS}/{latest.location}/ep2-ba4-rank0.pt"
    assert store.read(target) == (workdir / EP2).read_bytes()
    dest = tmp_path / "restored"
    download_checkpoint(root, dest, provider_kwargs=store.options)
    assert (dest / "ep2-ba4-rank0.pt").read_bytes() == (workdir / EP2).read_bytes()
    # Only committed locations and the symlink: nothing under the plain names.
    assert not [n for n in store.names() if n.startswith(f"{CKPTS}/ep")]

    # A new machine: the local checkpoints are gone; autoresume downloads through the logger,
    # following the symlink into the committed location, and goes on from epoch 2.
    shutil.rmtree(workdir / CKPTS)
    resumed = make_trainer(
        composer, store.logger(commit_checkpoints=CKPTS), max_duration="3ep", autoresume=True
    )
    fit_and_close(resumed)
    assert int(resumed.state.timestamp.epoch) == 3
    assert steps(logger, store) == [6, 4, 2]


@pytest.mark.parametrize("use_procs", [False, True], ids=["thread", "procs"])
def test_a_sharded_folder_is_one_commit_and_latest_names_the_folder(
    store_dir: Path, use_procs: bool
) -> None:
    # What Composer uploads for a sharded checkpoint (rank 0, world size 1): .metadata, the
    # shard, then the latest symlink naming the folder.
    logger = ObjectStoreLogger(
        "file", str(store_dir), commit_checkpoints="{run_name}/ckpts", use_procs=use_procs
    )
    logger.run_name = "run9"
    work = store_dir.parent / "work"
    (work / "ep1-ba2").mkdir(parents=True)
    (work / "ep1-ba2" / ".metadata").write_bytes(b"meta")
    (work / "ep1-ba2" / "__0_0.distcp").write_bytes(b"shard" * 1000)
    (work / "latest.symlink").write_text("run9/ckpts/ep1-ba2")
    state = SimpleNamespace(timestamp=SimpleNamespace(batch=SimpleNamespace(value=2)))
    for name in (".metadata", "__0_0.distcp"):
        logger.upload_file(state, f"run9/ckpts/ep1-ba2/{name}", work / "ep1-ba2" / name)
    root = logger.checkpoint_root_uri()
    assert root == (store_dir / "run9" / "ckpts").as_uri()
    logger.upload_file(state, "run9/ckpts/latest-rank0.pt.symlink", work / "latest.symlink")
    logger.close()

    ckpt = latest_checkpoint(root)
    assert ckpt is not None and ckpt.step == 2
    assert sorted(ckpt.files) == ["ep1-ba2/.metadata", "ep1-ba2/__0_0.distcp"]
    symlink = (store_dir / "run9/ckpts/latest-rank0.pt.symlink").read_text()
    assert symlink == f"run9/ckpts/{ckpt.location}/ep1-ba2"
    dest = store_dir.parent / "restored"
    download_checkpoint(root, dest)
    assert (dest / "ep1-ba2" / "__0_0.distcp").read_bytes() == b"shard" * 1000


def test_a_failed_checkpoint_is_never_committed_and_latest_stays(
    composer: Any,
    workdir: Path,
    moto_server: MotoServer,
    s3_bucket: str,
    fault_proxy: FaultProxy,
) -> None:
    # Every request for the second checkpoint's file is refused (403), for good.
    fault_proxy.deny("ep2-ba4-rank0.pt")
    options = moto_server.options(endpoint_url=fault_proxy.endpoint_url)
    logger = ObjectStoreLogger(
        "s3",
        s3_bucket,
        provider_kwargs=options,
        retry=RetryPolicy(attempts=2, base_delay=0.0, max_delay=0.0),
        commit_checkpoints=CKPTS,
    )
    trainer = make_trainer(composer, logger)
    with pytest.raises(UploadFailedError, match=r"ep2-ba4-rank0\.pt"):
        trainer.fit()
    trainer.close()
    root = logger.checkpoint_root_uri()
    assert root is not None
    committed = list_checkpoints(root, provider_kwargs=options)
    assert [c.step for c in committed] == [2]
    client = moto_server.client("s3")
    symlink = client.get_object(Bucket=s3_bucket, Key=LATEST + ".symlink")["Body"].read()
    assert symlink.decode() == f"{CKPTS}/{committed[0].location}/ep1-ba2-rank0.pt"
