"""nnU-Net's progress.png with a fourth panel: supervised loss, consistency loss and consistency weight."""
import os

import matplotlib

matplotlib.use("agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from nnunetv2.training.logging.nnunet_logger import LocalLogger  # noqa: E402

from nnunet_mem_cif.atomic import write_atomically  # noqa: E402

SSL_LOG_KEYS = ("train_sup_losses", "train_cons_losses", "cons_weights")


class SemiSupervisedLocalLogger(LocalLogger):
    """nnU-Net's local logger plus one value per epoch for each of SSL_LOG_KEYS.

    The values travel in nnU-Net's checkpoint with the rest of the log. The plot is nnU-Net's own, with the SSL
    panel appended below it (same width), so progress.png stays the one file users look at.
    """

    def __init__(self, verbose: bool = False):
        super().__init__(verbose)
        for key in SSL_LOG_KEYS:
            self.my_fantastic_logging[key] = []

    def plot_progress_png(self, output_folder: str):
        super().plot_progress_png(output_folder)
        path = os.path.join(output_folder, "progress.png")
        nnunet_panels = plt.imread(path)
        epochs = min(len(v) for v in self.my_fantastic_logging.values())
        x = list(range(epochs))
        dpi = 100
        fig, ax = plt.subplots(figsize=(nnunet_panels.shape[1] / dpi, 18), dpi=dpi)
        ax.plot(x, self.my_fantastic_logging["train_sup_losses"][:epochs], color="b", label="loss_tr supervised",
                linewidth=4)
        ax.plot(x, self.my_fantastic_logging["train_cons_losses"][:epochs], color="m",
                label="loss_tr consistency (unweighted)", linewidth=4)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        weight_axis = ax.twinx()
        weight_axis.plot(x, self.my_fantastic_logging["cons_weights"][:epochs], color="k", ls="--",
                         label="consistency weight", linewidth=3)
        weight_axis.set_ylabel("consistency weight")
        ax.legend(loc=(0, 1))
        weight_axis.legend(loc=(0.4, 1))
        fig.tight_layout()
        fig.canvas.draw()
        ssl_panel = np.asarray(fig.canvas.buffer_rgba(), dtype=np.float32) / 255.0
        plt.close(fig)
        if nnunet_panels.shape[2] == 3:
            nnunet_panels = np.concatenate((nnunet_panels, np.ones_like(nnunet_panels[..., :1])), axis=2)
        width = min(nnunet_panels.shape[1], ssl_panel.shape[1])
        combined = np.concatenate((nnunet_panels[:, :width], ssl_panel[:, :width]), axis=0)
        write_atomically(path, lambda partial: plt.imsave(partial, combined))
