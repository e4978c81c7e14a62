"""Trainer integrations against the real packages: a 2-step HF Trainer and Lightning run on CPU.

Tiny models are built from configs (no downloads); stores are a ``file://`` folder and the moto
S3 server. The packages are dev dependencies: a missing one fails here, it is never skipped.
"""

from __future__ import annotations

import logging
import os
import shutil
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
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import AsyncCheckpointIO
from torch.utils.data import DataLoader, TensorDataset

import artifact_uploader
from artifact_uploader import (
    ConfigError,
    MissingDependencyError,
    ObjectExistsError,
    StoreNotFoundError,
    Uploader,
    UploadFailedError,
)
from artifact_uploader._hf import HFUploadCallback
from artifact_uploader._lightning import LightningUploadCallback
from tests.servers.moto import MotoServer, list_s3_keys, read_s3_object

# Third-party notes about a CPU-only toy run; the tests assert on uploads, not on these.
THIRD_PARTY_WARNINGS = [
    "ignore::lightning.fabric.utilities.warnings.PossibleUserWarning",
    "ignore:.*does not have many workers.*:UserWarning",
    "ignore:.*GPU available but not used.*:UserWarning",
    # lightning's pytree helper on torch 2.13.
    "ignore:.*LeafSpec.*:FutureWarning",
]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    # Nothing may reach a model hub: the tiny models come from configs.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    # huggingface_hub read the variable when it was imported: set what it read, too.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def local_tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by POSIX relative path."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# -- Hugging Face -----------------------------------------------------------------------------


def tiny_bert() -> transformers.PreTrainedModel:
    config = transformers.BertConfig(
        vocab_size=32,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=2,
    )
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(config)


def tiny_dataset(n: int = 8) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [
        {
            "input_ids": torch.randint(0, 32, (8,), generator=g),
            "attention_mask": torch.ones(8, dtype=torch.long),
            "labels": torch.tensor(i % 2),
        }
        for i in range(n)
    ]


class CaptureCheckpoints(transformers.TrainerCallback):
    """Copies each checkpoint folder at ``on_save``, before the Trainer can rotate it away."""

    def __init__(self, into: Path) -> None:
        self.into = into
        self.saved: list[str] = []

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        name = f"checkpoint-{state.global_step}"
        shutil.copytree(Path(args.output_dir) / name, self.into / name)
        self.saved.append(name)


def hf_train(
    output_dir: Path, callbacks: list[transformers.TrainerCallback], *, save_total_limit: int | None
) -> transformers.Trainer:
    args = transformers.TrainingArguments(
        output_dir=str(output_dir),
        max_steps=2,
        save_strategy="steps",
        save_steps=1,
        save_total_limit=save_total_limit,
        per_device_train_batch_size=2,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    trainer = transformers.Trainer(
        model=tiny_bert(), args=args, train_dataset=tiny_dataset(), callbacks=callbacks
    )
    trainer.train()
    return trainer


def test_hf_two_steps_file_store_byte_identical(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    out = tmp_path / "out"
    upload = HFUploadCallback(store.as_uri(), object_name="run-1/{path}", final_model="final")
    hf_train(out, [upload], save_total_limit=None)

    assert upload.uploader is None  # closed at train end: it made it
    saved = local_tree(out)
    objects = local_tree(store / "run-1")
    for ckpt in ("checkpoint-1", "checkpoint-2"):
        files = {k: v for k, v in saved.items() if k.startswith(ckpt + "/")}
        assert f"{ckpt}/model.safetensors" in files and f"{ckpt}/trainer_state.json" in files
        for name, data in files.items():
            assert objects[name] == data, name
    # The final trainer state (with its log history) and the final model.
    state = objects["trainer_state.json"].decode()
    assert '"global_step": 2' in state and '"loss"' in state
    assert {"final/config.json", "final/model.safetensors"} <= set(objects)
    final = transformers.BertForSequenceClassification.from_pretrained(store / "run-1" / "final")
    assert final.config.hidden_size == 16


def test_hf_rotated_checkpoints_still_land_on_s3(
    tmp_path: Path, moto_server: MotoServer, moto_s3: Any, s3_bucket: str
) -> None:
    captured = tmp_path / "captured"
    out = tmp_path / "out"
    upload = HFUploadCallback(
        f"s3://{s3_bucket}/hf",
        provider_kwargs=moto_server.options(),
        exclude=["rng_state*.pth"],
    )
    capture = CaptureCheckpoints(captured)
    # save_total_limit=1: the Trainer deletes checkpoint-1 as soon as checkpoint-2 is written.
    hf_train(out, [capture, upload], save_total_limit=1)

    assert capture.saved == ["checkpoint-1", "checkpoint-2"]
    assert not (out / "checkpoint-1").exists()
    keys = set(list_s3_keys(moto_s3, s3_bucket, "hf/"))
    expected = {k for k in local_tree(captured) if "/rng_state" not in k}
    assert {"checkpoint-1/model.safetensors", "checkpoint-1/optimizer.pt"} <= expected
    assert keys == {f"hf/{k}" for k in expected} | {"hf/trainer_state.json"}
    for name, data in local_tree(captured).items():
        if name in expected:
            assert read_s3_object(moto_s3, s3_bucket, f"hf/{name}") == data, name


def test_hf_refused_object_is_named_at_train_end(tmp_path: Path) -> None:
    store = tmp_path / "store"
    (store / "checkpoint-1").mkdir(parents=True)
    (store / "checkpoint-1" / "config.json").write_bytes(b"already here")
    upload = HFUploadCallback(store.as_uri(), overwrite=False, upload_state=False)
    with pytest.raises(UploadFailedError) as info:
        hf_train(tmp_path / "out", [upload], save_total_limit=None)
    assert [f.name for f in info.value.failures] == ["checkpoint-1/config.json"]
    assert isinstance(info.value.failures[0].cause, ObjectExistsError)
    assert "checkpoint-1/config.json" in str(info.value)
    assert (store / "checkpoint-1" / "config.json").read_bytes() == b"already here"
    assert (store / "checkpoint-2" / "model.safetensors").is_file()


def test_hf_failures_logged_not_raised_when_asked(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = tmp_path / "store"
    (store / "checkpoint-2").mkdir(parents=True)
    (store / "checkpoint-2" / "config.json").write_bytes(b"x")
    upload = HFUploadCallback(
        store.as_uri(), overwrite=False, upload_state=False, raise_on_failure=False
    )
    with caplog.at_level(logging.ERROR, logger="artifact_uploader"):
        hf_train(tmp_path / "out", [upload], save_total_limit=None)
    assert "checkpoint-2/config.json" in caplog.text
    assert (store / "checkpoint-1" / "model.safetensors").is_file()


def test_hf_missing_bucket_fails_at_train_begin(tmp_path: Path, moto_server: MotoServer) -> None:
    upload = HFUploadCallback("s3://no-such-bucket-hf", provider_kwargs=moto_server.options())
    with pytest.raises(StoreNotFoundError):
        hf_train(tmp_path / "out", [upload], save_total_limit=None)
    assert not (tmp_path / "out" / "checkpoint-1").exists()


def test_hf_given_uploader_is_flushed_not_closed(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    with Uploader(store.as_uri()) as up:
        upload = HFUploadCallback(up, include=["*.json"], upload_state=False)
        hf_train(tmp_path / "out", [upload], save_total_limit=None)
        assert upload.uploader is up
        names = sorted(local_tree(store))
        assert names == [
            "checkpoint-1/config.json",
            "checkpoint-1/trainer_state.json",
            "checkpoint-2/config.json",
            "checkpoint-2/trainer_state.json",
        ]
        up.submit(store / "checkpoint-1" / "config.json", "still-open.json").result(timeout=30)


def test_hf_wait_on_save_raises_mid_training(tmp_path: Path) -> None:
    store = tmp_path / "store"
    (store / "checkpoint-1").mkdir(parents=True)
    (store / "checkpoint-1" / "model.safetensors").write_bytes(b"x")
    upload = HFUploadCallback(store.as_uri(), overwrite=False, wait_on_save=True)
    with pytest.raises(UploadFailedError, match=r"checkpoint-1/model\.safetensors"):
        hf_train(tmp_path / "out", [upload], save_total_limit=None)
    # Raised in on_save of step 1: training stopped before step 2 was saved.
    assert not (tmp_path / "out" / "checkpoint-2").exists()
    assert (store / "checkpoint-1" / "config.json").is_file()
    upload.close()


def test_hf_callback_reused_for_a_second_run_and_wait_on_end_false(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    upload = HFUploadCallback(store.as_uri(), object_name="{step}/{path}", wait_on_end=False)
    hf_train(tmp_path / "out1", [upload], save_total_limit=None)
    first = upload.uploader
    assert first is not None  # still open: wait_on_end=False
    upload.close()
    assert upload.uploader is None
    hf_train(tmp_path / "out2", [upload], save_total_limit=None)
    assert upload.uploader is not None and upload.uploader is not first
    upload.close()
    upload.close()  # idempotent
    objects = local_tree(store)
    assert (tmp_path / "out2" / "checkpoint-2" / "model.safetensors").read_bytes() == objects[
        "2/checkpoint-2/model.safetensors"
    ]
    assert "1/checkpoint-1/optimizer.pt" in objects and "2/trainer_state.json" in objects


def test_hf_only_the_main_process_uploads(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    upload = HFUploadCallback(store.as_uri())
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "out"), report_to=[])
    state = transformers.TrainerState(is_world_process_zero=False, global_step=1)
    control = transformers.TrainerControl()
    upload.on_train_begin(args, state, control)
    upload.on_save(args, state, control)  # no checkpoint folder, and no error: not our rank
    upload.on_train_end(args, state, control)
    assert upload.uploader is None
    assert list(store.iterdir()) == []


def test_hf_bad_options_raise_at_construction(tmp_path: Path) -> None:
    uri = tmp_path.as_uri()
    with pytest.raises(ConfigError, match=r"unknown field \{epoch\}"):
        HFUploadCallback(uri, object_name="{epoch}/{path}")
    with pytest.raises(ConfigError, match="include must be a list"):
        HFUploadCallback(uri, include="*.safetensors")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="staging='move'"):
        HFUploadCallback(uri, uploader_options={"staging": "move"})
    with pytest.raises(ConfigError, match="max_concurency"):
        HFUploadCallback(uri, uploader_options={"max_concurency": 2})
    with pytest.raises(ConfigError, match="malformed store URI"):
        HFUploadCallback("bucket-without-scheme")
    with pytest.raises(ConfigError, match="final_model"):
        HFUploadCallback(uri, final_model="/")


# -- Lightning --------------------------------------------------------------------------------


class TinyModule(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> DataLoader[Any]:
        g = torch.Generator().manual_seed(0)
        data = TensorDataset(torch.randn(8, 4, generator=g), torch.randn(8, 1, generator=g))
        return DataLoader(data, batch_size=2)


def pl_fit(root: Path, upload: LightningUploadCallback, save_top_k: int = -1) -> pl.Trainer:
    torch.manual_seed(0)
    trainer = pl.Trainer(
        max_steps=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        callbacks=[ModelCheckpoint(every_n_train_steps=1, save_top_k=save_top_k), upload],
    )
    trainer.fit(TinyModule())
    return trainer


CKPT1 = "checkpoints/epoch=0-step=1.ckpt"
CKPT2 = "checkpoints/epoch=0-step=2.ckpt"


@pytest.mark.filterwarnings(*THIRD_PARTY_WARNINGS)
def test_lightning_two_steps_file_store_byte_identical(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    root = tmp_path / "root"
    upload = LightningUploadCallback(store.as_uri(), object_name="run-1/{path}")
    trainer = pl_fit(root, upload)

    assert upload.uploader is None
    objects = local_tree(store / "run-1")
    assert sorted(objects) == [CKPT1, CKPT2]
    for name, data in objects.items():
        assert (root / name).read_bytes() == data
    assert torch.load(store / "run-1" / CKPT2, weights_only=False)["global_step"] == 2
    # The strategy has its own CheckpointIO back.
    assert type(trainer.strategy.checkpoint_io).__name__ == "TorchCheckpointIO"


@pytest.mark.filterwarnings(*THIRD_PARTY_WARNINGS)
def test_lightning_deleted_checkpoint_still_lands_on_s3(
    tmp_path: Path, moto_server: MotoServer, moto_s3: Any, s3_bucket: str
) -> None:
    root = tmp_path / "root"
    upload = LightningUploadCallback(
        f"s3://{s3_bucket}/pl", provider_kwargs=moto_server.options(), object_name="{step}/{path}"
    )
    # save_top_k=1 without a monitor keeps the latest: step 1's file is deleted after step 2.
    pl_fit(root, upload, save_top_k=1)

    assert not (root / CKPT1).exists()
    assert sorted(list_s3_keys(moto_s3, s3_bucket, "pl/")) == [f"pl/1/{CKPT1}", f"pl/2/{CKPT2}"]
    assert read_s3_object(moto_s3, s3_bucket, f"pl/2/{CKPT2}") == (root / CKPT2).read_bytes()
    (tmp_path / "one.ckpt").write_bytes(read_s3_object(moto_s3, s3_bucket, f"pl/1/{CKPT1}"))
    first = torch.load(tmp_path / "one.ckpt", weights_only=False)
    assert first["global_step"] == 1 and "state_dict" in first


@pytest.mark.filterwarnings(*THIRD_PARTY_WARNINGS)
def test_lightning_refused_object_is_named_at_teardown(tmp_path: Path) -> None:
    store = tmp_path / "store"
    (store / "checkpoints").mkdir(parents=True)
    (store / CKPT2).write_bytes(b"already here")
    upload = LightningUploadCallback(store.as_uri(), overwrite=False)
    with pytest.raises(UploadFailedError) as info:
        pl_fit(tmp_path / "root", upload)
    assert [f.name for f in info.value.failures] == [CKPT2]
    assert isinstance(info.value.failures[0].cause, ObjectExistsError)
    assert CKPT2 in str(info.value)
    assert (store / CKPT2).read_bytes() == b"already here"
    assert (store / CKPT1).is_file()
    assert upload.uploader is None


@pytest.mark.filterwarnings(*THIRD_PARTY_WARNINGS)
def test_lightning_missing_bucket_fails_at_setup(tmp_path: Path, moto_server: MotoServer) -> None:
    upload = LightningUploadCallback(
        "s3://no-such-bucket-pl", provider_kwargs=moto_server.options()
    )
    with pytest.raises(StoreNotFoundError):
        pl_fit(tmp_path / "root", upload)
    assert not (tmp_path / "root" / "checkpoints").exists()


class Boom(RuntimeError):
    pass


class FailAtStep2(pl.Callback):
    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == 2:
            raise Boom("training crashed")


@pytest.mark.filterwarnings(*THIRD_PARTY_WARNINGS)
def test_lightning_crash_keeps_the_original_error_and_closes(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    upload = LightningUploadCallback(store.as_uri())
    trainer = pl.Trainer(
        max_steps=4,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path / "root",
        callbacks=[ModelCheckpoint(every_n_train_steps=1, save_top_k=-1), upload, FailAtStep2()],
    )
    with pytest.raises(Boom):
        trainer.fit(TinyModule())
    assert upload.uploader is None
    assert type(trainer.strategy.checkpoint_io).__name__ == "TorchCheckpointIO"
    # What was saved before the crash was uploaded before the uploader closed.
    assert (store / CKPT1).is_file()


@pytest.mark.filterwarnings(*THIRD_PARTY_WARNINGS)
def test_lightning_refuses_async_checkpoint_io(tmp_path: Path) -> None:
    upload = LightningUploadCallback(tmp_path.as_uri())
    trainer = pl.Trainer(
        max_steps=1,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path / "root",
        plugins=[AsyncCheckpointIO()],
        callbacks=[upload],
    )
    with pytest.raises(ConfigError, match="AsyncCheckpointIO"):
        trainer.fit(TinyModule())


# -- import behaviour -------------------------------------------------------------------------


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_import_does_not_load_trainer_packages() -> None:
    proc = run_python(
        """
        import sys
        import artifact_uploader
        heavy = [m for m in ("torch", "transformers", "lightning", "pytorch_lightning")
                 if m in sys.modules]
        print(heavy)
        assert not heavy, heavy
        assert "HFUploadCallback" not in artifact_uploader.__all__
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("attr", "blocked", "extra"),
    [
        ("HFUploadCallback", ["transformers"], "hf"),
        ("LightningUploadCallback", ["lightning", "pytorch_lightning"], "lightning"),
    ],
)
def test_missing_package_names_the_extra(attr: str, blocked: list[str], extra: str) -> None:
    proc = run_python(
        f"""
        import sys
        for name in {blocked!r}:
            sys.modules[name] = None  # makes `import name` raise ImportError
        import artifact_uploader
        try:
            artifact_uploader.{attr}
        except artifact_uploader.MissingDependencyError as exc:
            print(exc)
        else:
            raise SystemExit("no error")
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert f"pip install 'artifact-uploader[{extra}]'" in proc.stdout


def test_lightning_falls_back_to_pytorch_lightning() -> None:
    proc = run_python(
        """
        import sys
        sys.modules["lightning"] = None  # only the standalone package is "installed"
        import pytorch_lightning
        from artifact_uploader import LightningUploadCallback
        assert issubclass(LightningUploadCallback, pytorch_lightning.Callback)
        print("ok")
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_lazy_names_resolve_to_the_classes() -> None:
    assert artifact_uploader.HFUploadCallback is HFUploadCallback
    assert artifact_uploader.LightningUploadCallback is LightningUploadCallback
    assert issubclass(HFUploadCallback, transformers.TrainerCallback)
    assert issubclass(LightningUploadCallback, pl.Callback)
    assert issubclass(MissingDependencyError, ImportError)
