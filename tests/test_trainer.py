"""The trainers in-process: checkpoint round trip, hidden-label mode, loud failures, nnU-Net's lookup."""
import json
import os

import pytest
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_mem_cif.architectures import MemCifUNet
from nnunet_mem_cif.atomic import partial_path
from nnunet_mem_cif.ssl.unlabeled_data import UnlabeledDataError
from nnunet_mem_cif.checkpoints import CheckpointError, read_checkpoint
from .nnunet_workspace import make_trainer


@pytest.fixture
def trainer_env(workspace, monkeypatch, tmp_path):
    workspace.set_environment(monkeypatch)
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    return workspace


def randomize(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.normal_()


def test_checkpoint_round_trip_restores_student_teacher_and_step(trainer_env, tmp_path):
    trainer = make_trainer("MemCifSemiTrainer_debug")
    trainer.initialize()
    randomize(trainer.network)
    randomize(trainer.teacher.module)
    trainer.ssl_step, trainer.unlabeled_batches_seen = 17, 17
    path = str(tmp_path / "checkpoint.pth")
    trainer.save_checkpoint(path)
    assert not os.path.exists(partial_path(path))

    restored = make_trainer("MemCifSemiTrainer_debug")
    restored.load_checkpoint(path)
    for name, source in [("student", trainer.network), ("teacher", trainer.teacher.module)]:
        target = restored.network if name == "student" else restored.teacher.module
        for (key, a), b in zip(source.state_dict().items(), target.state_dict().values()):
            assert torch.equal(a, b), f"{name}: {key}"
    assert not torch.equal(next(restored.network.parameters()), next(restored.teacher.module.parameters()))
    assert restored.ssl_step == 17 and restored.unlabeled_batches_seen == 17
    checkpoint = torch.load(path, weights_only=False)
    assert checkpoint["mem_cif_ssl"]["inference_weights"] == "student"
    assert checkpoint["trainer_name"] == "MemCifSemiTrainer_debug"


@pytest.mark.parametrize("name", ["MemCifSemiTrainer_debug", "MemCifTrainer", "MemCifSemiTrainer_table"])
def test_checkpoints_are_swapped_in_whole_by_one_rename(trainer_env, monkeypatch, tmp_path, name):
    """A training killed while it writes checkpoint_latest (nnU-Net writes it every epoch) must leave the previous
    one resumable: nothing is ever written onto the final path, one rename replaces it."""
    from nnunet_mem_cif.trainers.table_runs import TABLE_RUN_VARIABLE
    monkeypatch.setenv(TABLE_RUN_VARIABLE, json.dumps({"labeled_fraction": 0.5, "epochs": 2,
                                                       "iterations_per_epoch": 3, "seed": 1}))
    trainer = make_trainer(name)
    trainer.initialize()
    path = str(tmp_path / "checkpoint_latest.pth")
    trainer.save_checkpoint(path)
    with open(path, "rb") as f:
        before = f.read()
    written, renamed = [], []
    real_save, real_replace = torch.save, os.replace

    def killed_mid_write(checkpoint, target, *args, **kwargs):
        written.append(target)
        with open(target, "wb") as f:
            f.write(before[:100])
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed_mid_write)
    with pytest.raises(KeyboardInterrupt):
        trainer.save_checkpoint(path)
    with open(path, "rb") as f:
        assert written and path not in written and f.read() == before
    assert not os.path.exists(partial_path(path))

    written.clear()
    monkeypatch.setattr(torch, "save", lambda checkpoint, target, *args, **kwargs: (
        written.append(target), real_save(checkpoint, target, *args, **kwargs)))
    monkeypatch.setattr(os, "replace", lambda source, target: (renamed.append(target), real_replace(source, target)))
    trainer.save_checkpoint(path)
    assert written and path not in written and renamed == [path]
    assert ("mem_cif_ssl" in read_checkpoint(path, "cpu")) == name.startswith("MemCifSemi")


def test_resuming_from_a_checkpoint_without_ssl_state_fails_loudly(trainer_env, tmp_path):
    trainer = make_trainer("MemCifSemiTrainer_debug")
    trainer.initialize()
    path = str(tmp_path / "supervised.pth")
    nnUNetTrainer.save_checkpoint(trainer, path)  # what a supervised nnU-Net trainer writes
    with pytest.raises(RuntimeError, match="pretrained_weights"):
        make_trainer("MemCifSemiTrainer_debug").load_checkpoint(path)


class _WritesAFileWhenUnpickled:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.mark.parametrize("damage", ["tampered", "truncated"])
def test_unsafe_or_broken_checkpoints_are_refused_before_nnunet_unpickles_them(trainer_env, tmp_path, damage):
    trainer = make_trainer("MemCifSemiTrainer_debug")
    trainer.initialize()
    path = str(tmp_path / "checkpoint.pth")
    trainer.save_checkpoint(path)
    marker = tmp_path / "code_ran"
    if damage == "tampered":
        checkpoint = torch.load(path, weights_only=False)
        checkpoint["logging"]["payload"] = _WritesAFileWhenUnpickled(str(marker))
        torch.save(checkpoint, path)
    else:
        with open(path, "rb") as f:
            content = f.read()
        with open(path, "wb") as f:
            f.write(content[: len(content) // 3])
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        make_trainer("MemCifSemiTrainer_debug").load_checkpoint(path)
    assert not marker.exists()


def test_hidden_label_mode_hides_labels_of_a_seeded_subset(trainer_env):
    trainer = make_trainer("MemCifSemiTrainer_10pct")
    assert trainer.labeled_fraction == 0.10
    trainer.initialize()
    all_training, validation = nnUNetTrainer.do_split(trainer)
    labeled, val = trainer.do_split()
    assert val == validation and len(labeled) == 1
    record = load_json(os.path.join(trainer.output_folder, "labeled_subset.json"))
    assert record["labeled"] == labeled and record["seed"] == trainer.labeled_subset_seed
    assert sorted(record["labeled"] + record["unlabeled"]) == sorted(all_training)
    unlabeled = trainer.get_unlabeled_dataset()
    assert sorted(unlabeled.identifiers) == sorted(record["unlabeled"])
    again = make_trainer("MemCifSemiTrainer_10pct")
    assert again.do_split()[0] == labeled  # same seed, same subset
    fresh = make_trainer("MemCifSemiTrainer_10pct")
    os.remove(os.path.join(fresh.output_folder, "labeled_subset.json"))
    assert sorted(fresh.get_unlabeled_dataset().identifiers) == sorted(record["unlabeled"])
    assert not os.path.exists(os.path.join(fresh.output_folder, "labeled_subset.json"))  # a getter records nothing


def test_table_run_setting_reaches_the_trainer(trainer_env, monkeypatch):
    from nnunet_mem_cif.trainers.table_runs import TABLE_RUN_VARIABLE
    from nnunet_mem_cif.errors import PluginUserError
    setting = {"labeled_fraction": 0.5, "epochs": 3, "iterations_per_epoch": 10, "seed": 1, "batch_size": 3,
               "disable_tta": True}
    monkeypatch.setenv(TABLE_RUN_VARIABLE, json.dumps(setting))
    trainer = make_trainer("nnUNetTrainer_table")
    assert (trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch) == (3, 10, 2)
    assert trainer.configuration_manager.batch_size == 3 and trainer.disable_tta
    assert trainer.save_every == 1  # an interrupted table run loses at most one epoch
    with pytest.raises(PluginUserError, match="needs pseudo_labeled_folder"):
        make_trainer("nnUNetTrainer_selftraining_table")
    monkeypatch.setenv(TABLE_RUN_VARIABLE, json.dumps({**setting, "pseudo_labeled_folder": "/x"}))
    with pytest.raises(PluginUserError, match="does not train on pseudo-labels"):
        make_trainer("nnUNetTrainer_table")


def test_network_switches_of_the_variants(trainer_env):
    for name, use_mem, use_cif in [("MemCifSemiTrainer", True, True), ("MemCifSemiTrainer_noMEM", False, True),
                                   ("MemCifSemiTrainer_noCIF", True, False), ("MemCifTrainer", True, True)]:
        trainer = make_trainer(name)
        network = trainer.build_network_architecture(trainer.plans_manager, trainer.configuration_manager, 4, 3,
                                                     enable_deep_supervision=False)
        assert isinstance(network, MemCifUNet)
        assert (network.use_mem, network.use_cif) == (use_mem, use_cif), name


def test_missing_unlabeled_data_stops_before_training(trainer_env, monkeypatch, tmp_path):
    """A semi-supervised trainer never falls back to supervised training."""
    import shutil
    from .nnunet_workspace import DATASET_NAME
    copy = tmp_path / "preprocessed"
    shutil.copytree(os.path.join(trainer_env.preprocessed, DATASET_NAME), copy / DATASET_NAME)
    shutil.rmtree(copy / DATASET_NAME / "nnUNetPlans_3d_fullres_unlabeled")
    monkeypatch.setenv("nnUNet_preprocessed", str(copy))
    trainer = make_trainer("MemCifSemiTrainer_debug")
    trainer.initialize()
    with pytest.raises(UnlabeledDataError, match="preprocess-unlabeled"):
        trainer.get_dataloaders()
    assert trainer.dataloader_train is None


def test_demo_method_and_its_nnunet_baseline_share_one_schedule(trainer_env):
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    method, baseline = make_trainer("MemCifSemiTrainer_demo"), make_trainer("SupervisedBaselineTrainer_demo")
    for attribute in ("num_epochs", "num_iterations_per_epoch", "num_val_iterations_per_epoch"):
        assert getattr(method, attribute) == getattr(baseline, attribute)
    network = baseline.build_network_architecture(baseline.plans_manager, baseline.configuration_manager, 4, 3)
    assert type(network) is PlainConvUNet  # nnU-Net's own network, untouched


@pytest.mark.parametrize("name, network_class, perturbation", [
    ("MemCifSemiTrainer_debug", "MemCifUNet", "CrossModalPerturbation"),
    ("MemCifSemiTrainer_maskT1ce", "MemCifUNet", "CrossModalPerturbation"),
    ("MeanTeacherTrainer", "PlainConvUNet", "GaussianInputNoise")])
def test_one_semi_supervised_training_step(trainer_env, name, network_class, perturbation):
    """One real step in-process: both loss terms (the consistency inside the trainer's masks), the teacher moves
    towards the student, the step is counted."""
    trainer = make_trainer(name)
    trainer.on_train_start()
    asked = []
    narrow = trainer.consistency_masks
    trainer.consistency_masks = lambda strong, masks: asked.append(narrow(strong, masks)) or asked[-1]
    try:
        assert type(trainer.network).__name__ == network_class
        assert type(trainer.get_strong_perturbation()).__name__ == perturbation
        teacher_before = [p.clone() for p in trainer.teacher.module.parameters()]
        trainer.on_train_epoch_start()
        result = trainer.train_step(next(trainer.dataloader_train))
        assert result["sup_loss"] > 0 and result["cons_loss"] >= 0 and 0 < result["cons_weight"] <= 1
        assert trainer.ssl_step == 1 and trainer.unlabeled_batches_seen == 1
        assert len(asked) == 1 and len(asked[0]) == len(trainer.loss.supervised.weight_factors)  # every DS scale
        moved = [not torch.equal(a, b) for a, b in zip(teacher_before, trainer.teacher.module.parameters())]
        assert any(moved)
    finally:
        trainer.on_train_end()


def test_mem_and_cif_train_in_their_own_groups_and_resume_with_them(trainer_env, tmp_path):
    """nnU-Net's configure_optimizers, two groups more: MEM and CIF at mem_lr_multiplier / cif_lr_multiplier x lr,
    no weight decay; the groups (and their scales) survive a checkpoint round trip, and the schedule scales them."""
    from nnunet_mem_cif.architectures import ComplementaryInformationFusion, ModalitySpecificEnhancement
    trainer = make_trainer("MemCifSemiTrainer_debug")
    trainer.initialize()
    rest, mem, cif = trainer.optimizer.param_groups
    for group, module_type, multiplier in ((mem, ModalitySpecificEnhancement, trainer.mem_lr_multiplier),
                                           (cif, ComplementaryInformationFusion, trainer.cif_lr_multiplier)):
        expected = {id(p) for m in trainer.network.modules() if isinstance(m, module_type) for p in m.parameters()}
        assert {id(p) for p in group["params"]} == expected
        assert group["weight_decay"] == 0 and group["lr_scale"] == multiplier
    assert rest["weight_decay"] == trainer.weight_decay
    trainer.lr_scheduler.step(1)
    assert rest["lr"] < trainer.initial_lr
    assert cif["lr"] == pytest.approx(trainer.cif_lr_multiplier * rest["lr"])
    path = str(tmp_path / "checkpoint.pth")
    trainer.save_checkpoint(path)
    restored = make_trainer("MemCifSemiTrainer_debug")
    restored.load_checkpoint(path)
    assert [g["lr_scale"] for g in restored.optimizer.param_groups] == [1.0, trainer.mem_lr_multiplier,
                                                                        trainer.cif_lr_multiplier]
    restored.lr_scheduler.step(1)
    assert restored.optimizer.param_groups[2]["lr"] == pytest.approx(cif["lr"])
    supervised = make_trainer("nnUNetTrainer")
    supervised.initialize()
    assert len(supervised.optimizer.param_groups) == 1  # nnU-Net's own trainer is untouched


def test_keep_t1ce_variant_finds_t1ce_by_its_channel_name(trainer_env):
    trainer = make_trainer("MemCifSemiTrainer_keepT1ce")
    assert trainer.get_strong_perturbation().never_dropped == (1,)  # channel_names: 0 T1, 1 T1ce, 2 T2, 3 FLAIR


def test_mask_t1ce_variant_asks_no_tumor_core_or_enhancing_tumor_of_a_student_without_t1ce(trainer_env):
    from nnunet_mem_cif.errors import PluginUserError
    from nnunet_mem_cif.ssl.perturbation import CrossModalPerturbation
    trainer = make_trainer("MemCifSemiTrainer_maskT1ce")
    trainer.initialize()
    assert trainer.masked_channel == 1  # channel_names: 0 T1, 1 T1ce, 2 T2, 3 FLAIR
    assert trainer.masked_outputs.tolist() == [False, True, True]  # labels: whole, core, enhancing tumor
    weak = torch.randn(3, 4, 8, 8, 8)
    drop_t1ce = CrossModalPerturbation(drop_probability=0.0)
    strong = torch.stack([drop_t1ce(image=w.clone())["image"] for w in weak])
    strong[1, 1] = 0  # sample 1's view lacks T1ce, as CrossModalPerturbation drops it
    brain = torch.ones(3, 1, 8, 8, 8, dtype=torch.bool)
    brain[:, :, 0] = False
    for masks in (brain, [brain, brain[:, :, ::2, ::2, ::2]]):  # one scale, or deep supervision's scales
        narrowed = trainer.consistency_masks(strong, masks)
        for mask, source in zip(narrowed if isinstance(narrowed, list) else [narrowed],
                                masks if isinstance(masks, list) else [masks]):
            assert mask.shape[:2] == (3, 3)
            assert torch.equal(mask[1, 0], source[1, 0]) and not mask[1, 1:].any()  # WT still asked without T1ce
            assert torch.equal(mask[[0, 2]], source[[0, 2]].expand(2, 3, *source.shape[2:]))  # T1ce kept: all asked
    assert make_trainer("MemCifSemiTrainer").consistency_masks(strong, brain) is brain  # the full method's
    unknown = make_trainer("MemCifSemiTrainer_maskT1ce")
    unknown.masked_region_names = ("tumor_core", "necrosis")
    with pytest.raises(PluginUserError, match="necrosis"):
        unknown.initialize()  # before any training step
