"""Train a tiny KNIFE model; launched by tests/test_distributed.py with 1 process or `torchrun --nproc_per_node 2`.

Usage: train_distributed.py OUTPUT_FILE PER_DEVICE_BATCH GATHER(0|1) [BUDGET(0|1)]
BUDGET=1 trains under a budget (target 0.01 nats, a fast controller) instead of a fixed weight.
Writes the final state dict (rank 0) and the logged knife/* scalars next to it.
"""

from __future__ import annotations

import faulthandler
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402
from conftest import synthetic_dataset, tiny_model, training_args  # noqa: E402
from transformers import default_data_collator  # noqa: E402

from hf_knife.config import BudgetOptions, KNIFEConfig, MutualInformationOptions  # noqa: E402
from hf_knife.distributed import end_distributed_run  # noqa: E402
from hf_knife.trainer import KNIFETrainer  # noqa: E402


def main() -> None:
    faulthandler.enable(all_threads=True)  # an abort prints every thread's Python stack to stderr
    output, batch, gather = sys.argv[1], int(sys.argv[2]), bool(int(sys.argv[3]))
    budget = dict(target=0.01, budget=BudgetOptions(rate=0.1)) if len(sys.argv) > 4 and int(sys.argv[4]) else {}
    if len(sys.argv) > 5 and int(sys.argv[5]):  # the calibrated estimate: one temperature over all processes
        budget["mutual_information"] = MutualInformationOptions(fit="posterior", positive_part=False, calibrate=True)
    config = KNIFEConfig(sensitive_column="gender", num_components=4, gather_features=gather, **budget)
    trainer = KNIFETrainer(
        model=tiny_model("bert"),
        args=training_args(os.path.dirname(output) or ".", max_steps=3, per_device_train_batch_size=batch),
        train_dataset=synthetic_dataset(64),
        data_collator=default_data_collator,
        knife_config=config,
    )
    trainer.train()
    if trainer.is_world_process_zero():
        torch.save({k: v.detach().cpu() for k, v in trainer.model.state_dict().items()}, output)
        logs = [e for e in trainer.state.log_history if "knife/mutual_information" in e]
        with open(output + ".json", "w") as f:
            json.dump({"world_size": trainer.args.world_size, "logs": logs}, f)


if __name__ == "__main__":
    main()
    end_distributed_run()  # every rank has finished and rank 0 has written its files
