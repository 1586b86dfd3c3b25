"""VIB with the head's noise scale frozen at its initial value (sigma = 0.1): only the mean term of the KL acts.

Run from the repository root with the recipe's arguments, e.g.
    python results/fine_tuning/tuned/20newsgroups_k5_vib_frozen_sigma/frozen_sigma.py --dataset 20newsgroups \
        --num_train_per_class 5 --validation_size 200 --test_size 1000 --seeds 1,2,3,4,5 --methods vib --vib_beta 0.01
"""

import runpy
import sys
from pathlib import Path

from hf_knife.penalties import information_bottleneck

RECIPE = Path(__file__).resolve().parents[4] / "recipes" / "fine_tuning.py"
original_reset = information_bottleneck.GaussianHead.reset_parameters


def reset_and_freeze(self) -> None:
    original_reset(self)
    self.log_sigma.requires_grad_(False)  # log sigma stays at log(init_sigma)


information_bottleneck.GaussianHead.reset_parameters = reset_and_freeze
sys.path.insert(0, str(RECIPE.parent))
sys.argv = [str(RECIPE), *sys.argv[1:]]
runpy.run_path(str(RECIPE), run_name="__main__")
