"""Trainer checkpoints published through the commit protocol (``commit=True``), with the real
HF ``Trainer`` and Lightning ``Trainer`` on ``file://`` and moto.

A checkpoint is a fresh location ``step-N/<save-id>/`` plus a commit record written last; the
readers (``latest_checkpoint``, ``download_checkpoint``, ``list_checkpoints``) only see
committed ones. A save that loses a file (a 403 through the fault proxy) or whose process is
killed mid-upload (SIGKILL, readiness polled on the proxy) stays invisible.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import huggingface_hub.constants
import lightning.pytorch as pl
import pytest
import torch
import transformers
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from artifact_uploader import (
    CheckpointError,
    CheckpointNotCommittedError,
    ConfigError,
    RetryPolicy,
    Uploader,
    UploadFailedError,
    download_checkpoint,
    latest_checkpoint,
    list_checkpoints,
    resume_checkpoints,
)
from artifact_uploader._commit import COMMITS_DIR, Store, is_file_name, parse_record
from artifact_uploader._dcp import CheckpointReader
from artifact_uploader._hf import HFUploadCallback
from artifact_uploader._lightning import LightningUploadCallback
from tests.conftest import reaped, wait_until
from tests.integrations.test_integrations import (
    THIRD_PARTY_WARNINGS,
    CaptureCheckpoints,
    TinyModule,
    local_tree,
    tiny_bert,
    tiny_dataset,
)
from tests.servers.fault_proxy import Fault, FaultProxy
from tests.servers.moto import MotoServer, list_s3_keys

NO_RETRY = RetryPolicy(attempts=2, base_delay=0.0, max_delay=0.0)


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    # Nothing may reach a model hub: the tiny models come from configs.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def hf_args(output_dir: Path, max_steps: int, save_total_limit: int | None) -> Any:
    return transformers.TrainingArguments(
        output_dir=str(output_dir),
        max_steps=max_steps,
        save_strategy="steps",
        save_steps=1,
        save_total_limit=save_total_limit,
        per_device_train_batch_size=2,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )


def hf_trainer(
    output_dir: Path,
    callbacks: list[Any],
    *,
    max_steps: int = 2,
    save_total_limit: int | None = None,
) -> transformers.Trainer:
    return transformers.Trainer(
        model=tiny_bert(),
        args=hf_args(output_dir, max_steps, save_total_limit),
        train_dataset=tiny_dataset(),
        callbacks=callbacks,
    )


def committed_steps(root: str, **kwargs: Any) -> list[int]:
    return [c.step for c in list_checkpoints(root, **kwargs)]


# -- Hugging Face -----------------------------------------------------------------------------


def test_hf_commit_round_trip_keep_last_and_resume(tmp_path: Path) -> None:
    root = (tmp_path / "store" / "run-1").as_uri()
    captured = tmp_path / "captured"
    upload = HFUploadCallback(root, commit=True, keep_last=2)
    # save_total_limit=1: the Trainer deletes each older folder right after the next save,
    # while our retention deletes the store's oldest commit: neither disturbs the other.
    hf_trainer(
        tmp_path / "out",
        [CaptureCheckpoints(captured), upload],
        max_steps=3,
        save_total_limit=1,
    ).train()

    assert committed_steps(root) == [3, 2]
    latest = latest_checkpoint(root)
    assert latest is not None and latest.step == 3 and latest.kind == "files"
    assert not local_tree(tmp_path / "store" / "run-1" / "step-0000000001")  # retention
    dest = tmp_path / "restored"
    got = download_checkpoint(root, dest)
    assert got.location == latest.location
    assert local_tree(dest) == local_tree(captured / "checkpoint-3")  # byte-identical
    assert set(got.files) == set(local_tree(dest))
    # The trainer resumes from the downloaded folder.
    resumed = hf_trainer(tmp_path / "out2", [], max_steps=4)
    resumed.train(resume_from_checkpoint=str(dest))
    assert resumed.state.global_step == 4
    # A second download needs overwrite=True.
    with pytest.raises(FileExistsError):
        download_checkpoint(root, dest)
    assert download_checkpoint(root, dest, step=2, overwrite=True).step == 2
    assert local_tree(dest) == local_tree(captured / "checkpoint-2")


def test_hf_commit_failed_file_leaves_the_previous_checkpoint_latest_on_s3(
    tmp_path: Path,
    moto_server: MotoServer,
    moto_s3: Any,
    s3_bucket: str,
    fault_proxy: FaultProxy,
) -> None:
    root = f"s3://{s3_bucket}/hf"
    options = moto_server.options(endpoint_url=fault_proxy.endpoint_url)
    captured = tmp_path / "captured"
    # The first PUT of step 2's files is refused (403, not retried): step 2 is torn.
    fault_proxy.script(Fault("403"), match="/hf/step-0000000002/", method="PUT")
    upload = HFUploadCallback(
        root,
        commit=True,
        provider_kwargs=options,
        uploader_options={"retry": NO_RETRY},
    )
    with pytest.raises(UploadFailedError, match="step-0000000002"):
        hf_trainer(tmp_path / "out", [CaptureCheckpoints(captured), upload]).train()
    assert fault_proxy.counts["403"] == 1

    # Some of step 2's objects are in the store, but no commit record names them.
    step2 = list_s3_keys(moto_s3, s3_bucket, "hf/step-0000000002/")
    assert step2 and all(k.count("/") == 3 for k in step2)
    assert committed_steps(root, provider_kwargs=options) == [1]
    latest = latest_checkpoint(root, provider_kwargs=options)
    assert latest is not None and latest.step == 1
    assert latest_checkpoint(root, step=2, provider_kwargs=options) is None
    with pytest.raises(CheckpointNotCommittedError, match="step 2"):
        download_checkpoint(root, tmp_path / "two", step=2, provider_kwargs=options)
    dest = tmp_path / "one"
    download_checkpoint(root, dest, provider_kwargs=options)
    assert local_tree(dest) == local_tree(captured / "checkpoint-1")
    # The torn location is asked for by name: refused, naming the missing commit record.
    save_id = step2[0].split("/")[2]
    store = Store(root, options)
    with pytest.raises(CheckpointNotCommittedError, match="no commit record"):
        store.run(lambda s: s.resolve(2, save_id))
    # Clean-up removes exactly the uncommitted location.
    assert resume_checkpoints(root, tmp_path / "no-staging", provider_kwargs=options) == [
        f"step-0000000002/{save_id}"
    ]
    assert not list_s3_keys(moto_s3, s3_bucket, "hf/step-0000000002/")


CHILD = textwrap.dedent(
    """
    import json
    import sys
    import torch
    import transformers
    from artifact_uploader._hf import HFUploadCallback

    root, options, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    config = transformers.BertConfig(
        vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=16, num_labels=2,
    )
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config)
    data = [
        {"input_ids": torch.randint(0, 32, (8,)), "attention_mask": torch.ones(8, dtype=torch.long),
         "labels": torch.tensor(i % 2)}
        for i in range(8)
    ]
    upload = HFUploadCallback(root, commit=True, provider_kwargs=options)
    args = transformers.TrainingArguments(
        output_dir=out, max_steps=2, save_strategy="steps", save_steps=1,
        per_device_train_batch_size=2, report_to=[], use_cpu=True, disable_tqdm=True,
        dataloader_num_workers=0, seed=0,
    )
    transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=[upload]).train()
    """
)


def test_hf_commit_run_killed_mid_upload_leaves_the_previous_checkpoint_latest(
    tmp_path: Path,
    moto_server: MotoServer,
    moto_s3: Any,
    s3_bucket: str,
    fault_proxy: FaultProxy,
) -> None:
    root = f"s3://{s3_bucket}/hf"
    options = moto_server.options(endpoint_url=fault_proxy.endpoint_url)
    # Step 2's uploads are held by the proxy: the run is mid-upload when it is killed.
    fault_proxy.script(*[Fault("stall")] * 64, match="/hf/step-0000000002/", method="PUT")
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    log = tmp_path / "child.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    argv = [sys.executable, str(script), root, json.dumps(options), str(tmp_path / "out")]
    with log.open("wb") as err, reaped(subprocess.Popen(argv, env=env, stderr=err)) as child:
        # Ready when step 1 is committed and a step-2 upload is held at the proxy.
        def ready() -> bool:
            assert child.poll() is None, log.read_text()[-3000:]
            return bool(fault_proxy.seen("/hf/step-0000000002/")) and committed_steps(
                root, provider_kwargs=moto_server.options()
            ) == [1]

        # Every 0.2 s: each look lists the store.
        wait_until(ready, timeout=240, what="the child to reach step 2's uploads", interval=0.2)
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=60) == -signal.SIGKILL
    fault_proxy.release_stalls()

    plain = moto_server.options()
    assert committed_steps(root, provider_kwargs=plain) == [1]
    latest = latest_checkpoint(root, provider_kwargs=plain)
    assert latest is not None and latest.step == 1
    dest = tmp_path / "restored"
    download_checkpoint(root, dest, provider_kwargs=plain)
    assert json.loads((dest / "trainer_state.json").read_bytes())["global_step"] == 1
    assert latest_checkpoint(root, step=2, provider_kwargs=plain) is None


def test_hf_commit_options_are_checked(tmp_path: Path) -> None:
    uri = tmp_path.as_uri()
    with pytest.raises(ConfigError, match="object_name"):
        HFUploadCallback(uri, commit=True, object_name="{step}/{path}")
    with pytest.raises(ConfigError, match="keep_last applies only with commit"):
        HFUploadCallback(uri, keep_last=2)
    with pytest.raises(ConfigError, match="keep_last must be an int"):
        HFUploadCallback(uri, commit=True, keep_last=0)
    with Uploader(uri) as up, pytest.raises(ConfigError, match="needs the store as a URI"):
        HFUploadCallback(up, commit=True)


# -- Lightning --------------------------------------------------------------------------------


class FolderCheckpointIO(CheckpointIO):
    """Writes each checkpoint as a folder (as sharded strategies do): a torch file per part."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        folder = Path(path)
        (folder / "shards").mkdir(parents=True, exist_ok=True)
        state = checkpoint.pop("state_dict")
        torch.save(state, folder / "shards" / "model.pt")
        torch.save(checkpoint, folder / "meta.pt")
        checkpoint["state_dict"] = state

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: Any = None) -> Any:
        folder = Path(path)
        checkpoint: dict[str, Any] = torch.load(folder / "meta.pt", weights_only=False)
        checkpoint["state_dict"] = torch.load(folder / "shards" / "model.pt")
        return checkpoint

    def remove_checkpoint(self, path: Any) -> None:
        import shutil

        shutil.rmtree(path)


def pl_trainer(
    root: Path, upload: Any | None, max_steps: int = 2, plugins: Any = None
) -> pl.Trainer:
    torch.manual_seed(0)
    callbacks: list[Any] = [ModelCheckpoint(every_n_train_steps=1, save_top_k=-1)]
    return pl.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        plugins=plugins,
        callbacks=callbacks if upload is None else [*callbacks, upload],
    )


@pytest.mark.filterwarnings(*THIRD_PARTY_WARNINGS)
# Resuming on "another machine": the checkpoint's folder is not this trainer's, as expected.
@pytest.mark.filterwarnings("ignore:The dirpath has changed:UserWarning")
def test_lightning_commit_ckpt_round_trip_keep_last_and_resume(tmp_path: Path) -> None:
    root = (tmp_path / "store").as_uri()
    local = tmp_path / "root"
    upload = LightningUploadCallback(root, commit=True, keep_last=1)
    pl_trainer(local, upload).fit(TinyModule())

    assert committed_steps(root) == [2]  # keep_last=1: step 1 uncommitted, then deleted
    assert not local_tree(tmp_path / "store" / "step-0000000001")
    dest = tmp_path / "restored"
    ckpt = download_checkpoint(root, dest)
    assert list(ckpt.files) == ["epoch=0-step=2.ckpt"]
    restored = dest / "epoch=0-step=2.ckpt"
    assert restored.read_bytes() == (local / "checkpoints" / "epoch=0-step=2.ckpt").read_bytes()
    # DCP's reader refuses it by name rather than failing on a missing .metadata.
    with pytest.raises(CheckpointError, match="not by a CheckpointWriter"):
        CheckpointReader(root).resolve()
    again = pl_trainer(tmp_path / "root2", None, max_steps=3)
    again.fit(TinyModule(), ckpt_path=restored)
    assert again.global_step == 3


@pytest.mark.filterwarnings(*THIRD_PARTY_WARNINGS)
def test_lightning_commit_folder_checkpoint_on_s3(
    tmp_path: Path, moto_server: MotoServer, s3_bucket: str
) -> None:
    root = f"s3://{s3_bucket}/pl"
    options = moto_server.options()
    local = tmp_path / "root"
    upload = LightningUploadCallback(root, commit=True, provider_kwargs=options)
    pl_trainer(local, upload, plugins=[FolderCheckpointIO()]).fit(TinyModule())

    assert committed_steps(root, provider_kwargs=options) == [2, 1]
    dest = tmp_path / "restored"
    ckpt = download_checkpoint(root, dest, provider_kwargs=options)
    name = "epoch=0-step=2.ckpt"
    assert sorted(ckpt.files) == [f"{name}/meta.pt", f"{name}/shards/model.pt"]
    assert local_tree(dest / name) == local_tree(local / "checkpoints" / name)
    loaded = FolderCheckpointIO().load_checkpoint(dest / name)
    assert loaded["global_step"] == 2 and "layer.weight" in loaded["state_dict"]


@pytest.mark.filterwarnings(*THIRD_PARTY_WARNINGS)
def test_lightning_commit_failed_part_is_never_latest(
    tmp_path: Path, moto_server: MotoServer, s3_bucket: str, fault_proxy: FaultProxy
) -> None:
    root = f"s3://{s3_bucket}/pl"
    options = moto_server.options(endpoint_url=fault_proxy.endpoint_url)
    # Step 2's model part is refused: its meta.pt lands, the folder is torn.
    fault_proxy.script(Fault("403"), match="step-0000000002/", method="PUT")
    upload = LightningUploadCallback(
        root, commit=True, provider_kwargs=options, uploader_options={"retry": NO_RETRY}
    )
    with pytest.raises(UploadFailedError, match="step-0000000002"):
        pl_trainer(tmp_path / "root", upload, plugins=[FolderCheckpointIO()]).fit(TinyModule())
    assert committed_steps(root, provider_kwargs=options) == [1]
    latest = latest_checkpoint(root, provider_kwargs=options)
    assert latest is not None and latest.step == 1
    dest = tmp_path / "restored"
    download_checkpoint(root, dest, provider_kwargs=options)
    assert sorted(local_tree(dest)) == [
        "epoch=0-step=1.ckpt/meta.pt",
        "epoch=0-step=1.ckpt/shards/model.pt",
    ]


# -- the record, read back as untrusted input ---------------------------------------------------


def record(files: dict[str, int], kind: str = "files") -> bytes:
    save_id = "0" * 32
    return json.dumps(
        {
            "format": "artifact-uploader-dcp/1",
            "step": 3,
            "generation": 1,
            "save_id": save_id,
            "location": f"step-0000000003/{save_id}",
            "files": files,
            "metric": None,
            "world_size": 1,
            "kind": kind,
        }
    ).encode()


def test_files_records_accept_nested_names_and_refuse_escapes() -> None:
    name = f"{COMMITS_DIR}/0000000003-000001.json"
    ok = parse_record("file:///r", name, record({"epoch=0-step=3.ckpt/shards/model.pt": 5}))
    assert ok.kind == "files" and ok.files == {"epoch=0-step=3.ckpt/shards/model.pt": 5}
    for bad in ("../evil", "a/../../b", "/abs", "a//b", "a\\b", ".", "a/./b"):
        assert not is_file_name(bad), bad
        with pytest.raises(CheckpointError, match="malformed"):
            parse_record("file:///r", name, record({bad: 1}))
    with pytest.raises(CheckpointError, match="unknown kind"):
        parse_record("file:///r", name, record({"a": 1}, kind="other"))
    with pytest.raises(CheckpointError, match=r"naming \.metadata"):
        parse_record("file:///r", name, record({"a": 1}, kind="dcp"))


def test_download_refuses_a_torn_committed_checkpoint(tmp_path: Path) -> None:
    root = (tmp_path / "store").as_uri()
    upload = HFUploadCallback(root, commit=True, upload_state=False)
    hf_trainer(tmp_path / "out", [upload], max_steps=1).train()
    latest = latest_checkpoint(root)
    assert latest is not None
    # Damage outside the library: one file of the committed checkpoint disappears.
    (tmp_path / "store" / latest.location / "config.json").unlink()
    with pytest.raises(CheckpointError, match="torn") as info:
        download_checkpoint(root, tmp_path / "dest")
    assert info.value.missing == ("config.json",)
    assert not (tmp_path / "dest").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".download-")]


def test_download_skips_a_checkpoint_retention_deletes_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import artifact_uploader._checkpoints as checkpoints
    from artifact_uploader._publish import CheckpointPublisher

    root = (tmp_path / "store").as_uri()
    for step in (1, 2):
        (tmp_path / f"w{step}.bin").write_bytes(bytes([step]) * 1000)
    publisher = CheckpointPublisher(Store(root), owner="test")
    with Uploader(root) as up:
        for step in (1, 2):
            publisher.publish(up, [("w.bin", tmp_path / f"w{step}.bin")], step).result(60)
    assert publisher.close() == []
    real = checkpoints._download_files
    deleted: list[int] = []

    def retention_strikes_first(up: Any, ckpt: Any, folder: Path) -> None:
        if not deleted:
            # Between resolving step 2 and reading it, it is uncommitted and deleted, in the
            # order retention deletes: record first, then data.
            (tmp_path / "store" / ckpt.record).unlink()
            (tmp_path / "store" / ckpt.location / "w.bin").unlink()
            deleted.append(ckpt.step)
        real(up, ckpt, folder)

    monkeypatch.setattr(checkpoints, "_download_files", retention_strikes_first)
    got = download_checkpoint(root, tmp_path / "dest")
    assert deleted == [2] and got.step == 1
    assert (tmp_path / "dest" / "w.bin").read_bytes() == bytes([1]) * 1000
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".download-")] == []
