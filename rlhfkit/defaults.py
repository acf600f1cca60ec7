"""Where each pipeline stage reads its data by default: stack-exchange-paired's sub-folder layout, as optimum-habana's commands read it.

optimum-habana's ``examples/trl`` scripts default to lvwerra/stack-exchange-paired with ``data_dir`` per stage; so do ours, and
the embedded toy dataset (used when no ``--dataset_name`` is given) has the same layout.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

STAGE_SUBSETS = {
    "finetune": "data/finetune",
    "reward": "data/reward",
    "evaluation": "data/evaluation",
    "rl": "data/rl",
}
# hub datasets known to use the per-stage data_dir layout
SEED_LAYOUT_DATASETS = ("lvwerra/stack-exchange-paired",)


def dataset_for(stage: str, dataset_name: str | None, subset: str | None) -> tuple[str, str | None]:
    """(dataset, subset) for a stage: the embedded toy data when no dataset is given; the stage's sub-folder
    when no subset is given and the dataset has stack-exchange-paired's layout (a known hub id, or a local folder with it)."""
    stage_subset = STAGE_SUBSETS[stage]
    if dataset_name is None:
        from rlhfkit import embedded

        root = embedded.dataset_dir(embedded.ensure())
        logger.info("no --dataset_name: using the embedded toy dataset %s (%s)", root, subset or stage_subset)
        return root, subset or stage_subset
    if subset is not None or "," in dataset_name:
        return dataset_name, subset
    local = os.path.expanduser(dataset_name)
    if dataset_name in SEED_LAYOUT_DATASETS or (os.path.isdir(local) and os.path.isdir(os.path.join(local, stage_subset))):
        logger.info("using sub-folder %s of %s (pass --subset to choose another)", stage_subset, dataset_name)
        return dataset_name, stage_subset
    return dataset_name, None
