"""Mean-teacher semi-supervised training on top of nnU-Net's trainer, network-agnostic.

What it adds to nnUNetTrainer (everything else, including the supervised loss, is nnU-Net's):
- an unlabeled data loader (nnU-Net's loader and spatial augmentation, weak + strong view of each patch),
- an EMA teacher that predicts on the weak view,
- ``L = L_sup + lambda(t) * L_cons`` with a masked, deep-supervised consistency term and sigmoid ramp-up,
- checkpoints that carry the teacher and the SSL step (written atomically), logs and progress.png with both
  loss terms.
"""
from typing import List, Optional

import numpy as np
import torch
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform
from batchgeneratorsv2.transforms.utils.nnunet_masking import MaskImageTransform
from batchgeneratorsv2.transforms.utils.pseudo2d import Convert2DTo3DTransform, Convert3DTo2DTransform
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.collate_outputs import collate_outputs
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from nnunetv2.utilities.helpers import dummy_context
from torch import autocast, nn
from torch import distributed as dist
from torch._dynamo import OptimizedModule
from torch.nn.parallel import DistributedDataParallel as DDP

from nnunet_mem_cif.ssl.consistency import MaskedProbabilityMSE, SemiSupervisedLoss, sigmoid_rampup
from nnunet_mem_cif.ssl.ema import EMATeacher, ema_decay_at
from nnunet_mem_cif.ssl.perturbation import CrossModalPerturbation, WeakStrongViews
from nnunet_mem_cif.ssl.progress import SemiSupervisedLocalLogger
from nnunet_mem_cif.ssl.unlabeled_data import UnlabeledDataLoader, UnlabeledDataError, brain_mask, \
    check_hidden_label_pool, check_unlabeled_sources, load_unlabeled_dataset
from nnunet_mem_cif.checkpoints import CheckpointError, read_checkpoint
from nnunet_mem_cif.trainers.atomic_checkpoints import AtomicCheckpointsMixin
from nnunet_mem_cif.trainers.hidden_labels import HiddenLabelsMixin

# the parts of nnU-Net's training augmentation that both views share (geometry, and zeroing outside the brain)
SHARED_VIEW_TRANSFORMS = (SpatialTransform, Convert3DTo2DTransform, Convert2DTo3DTransform, MirrorTransform,
                          MaskImageTransform)
SSL_CHECKPOINT_KEY = "mem_cif_ssl"


class SemiSupervisedTrainer(AtomicCheckpointsMixin, HiddenLabelsMixin, nnUNetTrainer):
    """nnU-Net trainer + mean teacher with cross-modal consistency on unlabeled cases (docs/design.md §3).

    Unlabeled data come from ``get_unlabeled_dataset``: the cases preprocessed by ``nnunet-mem-cif
    preprocess-unlabeled``, or, in hidden-label mode (``labeled_fraction`` set), the training cases of the fold whose
    labels are hidden. If they are missing or stale, training stops with an UnlabeledDataError; it never falls
    back to supervised training.

    ``nnUNetv2_predict`` uses the *student* (``network_weights``, as nnU-Net saves it); the teacher is stored under
    ``checkpoint['mem_cif_ssl']['teacher_weights']`` for resuming.
    """

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.ema_decay = 0.99
        self.consistency_weight_max = 1.0
        self.consistency_rampup_fraction = 0.4  # of all training iterations
        self.unlabeled_batch_size: Optional[int] = None  # None: same as the labeled batch size
        self.teacher: Optional[EMATeacher] = None
        self.dataloader_unlabeled = None
        self.ssl_step = 0
        self.unlabeled_batches_seen = 0
        self.logger.local_logger = SemiSupervisedLocalLogger()

    # ---------------------------------------------------------------- network, teacher and loss
    def _student_module(self) -> nn.Module:
        module = self.network.module if isinstance(self.network, DDP) else self.network
        return module._orig_mod if isinstance(module, OptimizedModule) else module

    def initialize(self):
        super().initialize()
        self.teacher = EMATeacher(self._student_module()).to(self.device)

    def _build_loss(self):
        supervised = super()._build_loss()
        consistency = MaskedProbabilityMSE(use_sigmoid=self.label_manager.has_regions)
        if self.enable_deep_supervision:
            consistency = DeepSupervisionWrapper(consistency, supervised.weight_factors)
        return SemiSupervisedLoss(supervised, consistency)

    def set_deep_supervision_enabled(self, enabled: bool):
        super().set_deep_supervision_enabled(enabled)
        if self.teacher is not None:
            self.teacher.module.decoder.deep_supervision = enabled

    def consistency_weight(self) -> float:
        rampup_steps = self.consistency_rampup_fraction * self.num_epochs * self.num_iterations_per_epoch
        return self.consistency_weight_max * sigmoid_rampup(self.ssl_step, rampup_steps)

    def _autocast(self):
        # as nnUNetTrainer.train_step: autocast on CUDA only (slow on CPU, unsupported on MPS)
        return autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context()

    # ---------------------------------------------------------------- data
    def get_unlabeled_dataset(self):
        """The unlabeled cases, checked before training starts: none may be a training, validation or test case.

        From ``imagesUnlabeled``: the preprocessed set must still be that of the raw folder it was made from, and
        share no case with imagesTr / imagesTs by name or content (``check_unlabeled_sources``). In hidden-label mode:
        the fold's training cases with hidden labels, none of which may be a validation or test case
        (``check_hidden_label_pool``).
        """
        if self.labeled_fraction is None:
            dataset = load_unlabeled_dataset(self.preprocessed_dataset_folder_base, self.plans_manager,
                                             self.configuration_name)
            labeled = infer_dataset_class(self.preprocessed_dataset_folder).get_identifiers(
                self.preprocessed_dataset_folder)
            check_unlabeled_sources(self.preprocessed_dataset_folder_base, self.plans_manager,
                                    self.configuration_name, labeled)
            return dataset
        if self.hidden_label_keys is None:
            self.hidden_label_split()
        if not self.hidden_label_keys:
            raise UnlabeledDataError(f"labeled_fraction={self.labeled_fraction} leaves no training case of fold "
                                     f"{self.fold} unlabeled; use a smaller fraction or more cases.")
        check_hidden_label_pool(self.plans_manager.dataset_name, self.dataset_json["file_ending"],
                                self.hidden_label_keys, self.validation_keys or [], self.fold)
        return self.dataset_class(self.preprocessed_dataset_folder, self.hidden_label_keys)

    def get_unlabeled_transforms(self, patch_size, rotation_for_DA, deep_supervision_scales, mirror_axes,
                                 do_dummy_2d_data_aug) -> ComposeTransforms:
        """nnU-Net's own spatial augmentation (taken from ``get_training_transforms``, so DA variants carry over),
        then the weak/strong views, then the brain mask at every deep-supervision scale."""
        nnunet_transforms = self.get_training_transforms(
            patch_size, rotation_for_DA, None, mirror_axes, do_dummy_2d_data_aug,
            use_mask_for_norm=self.configuration_manager.use_mask_for_norm)
        shared = [t for t in nnunet_transforms.transforms if isinstance(t, SHARED_VIEW_TRANSFORMS)]
        if not any(isinstance(t, SpatialTransform) for t in shared):
            raise RuntimeError(f"{type(self).__name__}.get_training_transforms contains no SpatialTransform; the "
                               f"unlabeled pipeline reuses nnU-Net's spatial augmentation and cannot be built.")
        transforms = shared + [WeakStrongViews(self.get_strong_perturbation())]
        if deep_supervision_scales is not None:
            transforms.append(DownsampleSegForDSTransform(ds_scales=deep_supervision_scales))
        return ComposeTransforms(transforms)

    def get_strong_perturbation(self):
        """The student's view of an unlabeled patch; MeanTeacher-style baselines override this."""
        return CrossModalPerturbation()

    def consistency_masks(self, strong: torch.Tensor, masks):
        """Where the student is asked to match the teacher: the brain (one mask per deep-supervision scale, shared
        by every output channel). A variant may narrow it per sample and output channel from the strong view."""
        return masks

    def get_dataloaders(self):
        if self.is_cascaded:
            raise NotImplementedError("semi-supervised training of cascade stages is not supported: unlabeled "
                                      "cases have no previous-stage segmentations.")
        unlabeled = self.get_unlabeled_dataset()  # fails loudly before any worker process starts
        dataloader_train, dataloader_val = super().get_dataloaders()

        rotation_for_DA, do_dummy_2d_data_aug, initial_patch_size, mirror_axes = \
            self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        transforms = self.get_unlabeled_transforms(self.configuration_manager.patch_size, rotation_for_DA,
                                                   self._get_deep_supervision_scales(), mirror_axes,
                                                   do_dummy_2d_data_aug)
        loader = UnlabeledDataLoader(unlabeled, self.unlabeled_batch_size or self.batch_size, initial_patch_size,
                                     self.configuration_manager.patch_size, self.label_manager, transforms)
        num_processes = get_allowed_n_proc_DA()
        if num_processes == 0:
            self.dataloader_unlabeled = SingleThreadedAugmenter(loader, None)
        else:
            self.dataloader_unlabeled = NonDetMultiThreadedAugmenter(
                loader, None, num_processes=max(1, num_processes // 2), num_cached=max(3, num_processes // 2),
                seeds=None, pin_memory=self.device.type == "cuda", wait_time=0.002)
        source = "training cases with hidden labels" if self.labeled_fraction is not None else "unlabeled folder"
        self.print_to_log_file(f"Unlabeled cases: {len(unlabeled.identifiers)} ({source}); SSL: consistency weight "
                               f"{self.consistency_weight_max:g} (ramped up over the first "
                               f"{self.consistency_rampup_fraction:.0%} of iterations), EMA decay {self.ema_decay:g}")
        _ = next(self.dataloader_unlabeled)
        return dataloader_train, dataloader_val

    def on_train_start(self):
        super().on_train_start()
        if self.ssl_step == 0:
            # a fresh run may have loaded -pretrained_weights into the student after the teacher was created
            self.teacher.module.load_state_dict(self._student_module().state_dict())

    def on_train_end(self):
        super().on_train_end()
        if isinstance(self.dataloader_unlabeled, (NonDetMultiThreadedAugmenter, MultiThreadedAugmenter)):
            self.dataloader_unlabeled._finish()

    # ---------------------------------------------------------------- training
    def train_step(self, batch: dict) -> dict:
        """Teacher on the weak view, student on the strong view (its consistency gradients computed right away and
        its activations freed), then nnU-Net's own train_step on the labeled batch adds the supervised gradients
        and steps (see SemiSupervisedLoss for why two passes)."""
        unlabeled = next(self.dataloader_unlabeled)
        self.unlabeled_batches_seen += 1
        views = unlabeled["data"]
        num_channels = views.shape[1] // 2
        weak = views[:, :num_channels].to(self.device, non_blocking=True)
        strong = views[:, num_channels:].to(self.device, non_blocking=True)
        masks = unlabeled["target"]
        masks = [brain_mask(m).to(self.device, non_blocking=True) for m in masks] if isinstance(masks, list) \
            else brain_mask(masks).to(self.device, non_blocking=True)
        masks = self.consistency_masks(strong, masks)
        with torch.no_grad(), self._autocast():
            teacher_output = self.teacher(weak)
        del weak
        weight = self.consistency_weight()
        # the network nnU-Net trains, without the DDP wrapper: DDP reduces the summed gradients in nnU-Net's backward
        student = self.network.module if isinstance(self.network, DDP) else self.network
        parameters = [p for p in student.parameters() if p.requires_grad]
        with self._autocast():
            consistency = self.loss.consistency(student(strong), teacher_output, masks)
        scaled = weight * consistency
        if self.grad_scaler is not None:
            scaled = self.grad_scaler.scale(scaled)
        gradients = torch.autograd.grad(scaled, parameters, allow_unused=True)
        del teacher_output, strong, scaled
        self.loss.prepare_unlabeled(parameters, gradients, consistency, weight)
        result = super().train_step(batch)
        self.teacher.update(self._student_module(), ema_decay_at(self.ssl_step, self.ema_decay))
        self.ssl_step += 1
        result.update(sup_loss=self.loss.last_supervised.cpu().numpy(),
                      cons_loss=self.loss.last_consistency.cpu().numpy(), cons_weight=np.float64(weight))
        return result

    def _mean_over_ranks(self, values) -> float:
        if self.is_ddp:
            gathered = [None for _ in range(dist.get_world_size())]
            dist.all_gather_object(gathered, values)
            values = np.concatenate([np.ravel(v) for v in gathered])
        return float(np.mean(values))

    def on_train_epoch_end(self, train_outputs: List[dict]):
        super().on_train_epoch_end(train_outputs)
        outputs = collate_outputs(train_outputs)
        supervised = self._mean_over_ranks(outputs["sup_loss"])
        consistency = self._mean_over_ranks(outputs["cons_loss"])
        weight = float(np.mean(outputs["cons_weight"]))
        self.logger.log("train_sup_losses", supervised, self.current_epoch)
        self.logger.log("train_cons_losses", consistency, self.current_epoch)
        self.logger.log("cons_weights", weight, self.current_epoch)
        self.print_to_log_file(f"SSL: supervised loss {supervised:.4f}, consistency loss {consistency:.6f}, "
                               f"consistency weight {weight:.4f}, unlabeled batches {len(train_outputs)} this epoch "
                               f"({self.unlabeled_batches_seen} in total)")

    # ---------------------------------------------------------------- checkpoints
    def ssl_state(self) -> dict:
        return {"teacher_weights": self.teacher.module.state_dict(), "ssl_step": self.ssl_step,
                "unlabeled_batches_seen": self.unlabeled_batches_seen, "ema_decay": self.ema_decay,
                "inference_weights": "student"}

    def checkpoint_entries(self) -> dict:
        return {SSL_CHECKPOINT_KEY: self.ssl_state()}

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        state = read_checkpoint(filename_or_checkpoint, self.device).get(SSL_CHECKPOINT_KEY)
        if state is None:
            raise CheckpointError(f"{filename_or_checkpoint} has no teacher / SSL state ('{SSL_CHECKPOINT_KEY}'): "
                                  f"it was not written by a semi-supervised trainer of this plugin. To start from a "
                                  f"supervised model, use nnUNetv2_train ... -pretrained_weights instead of --c.")
        super().load_checkpoint(filename_or_checkpoint)
        self.teacher.module.load_state_dict(state["teacher_weights"])
        self.ssl_step = state["ssl_step"]
        self.unlabeled_batches_seen = state["unlabeled_batches_seen"]
