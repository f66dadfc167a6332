"""Semi-supervised pieces: consistency loss and ramp-up, EMA teacher, cross-modal perturbation, unlabeled data."""
