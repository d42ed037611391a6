"""Run by tests/test_distributed.py under ``torchrun --standalone --nproc_per_node=K``.

Every process builds the same global batch of embeddings, keeps its share of the rows, computes
each loss through ``sslkit.distributed.global_loss`` and saves the loss and the gradients with
respect to its own rows to ``OUT/rank<r>.pt``, for the test to compare with one process holding
the whole batch.
"""

import sys

import torch
import torch.distributed as dist

from sslkit.distributed import global_loss, global_mean, initialize, rank, world_size
from sslkit.losses import barlow_twins_loss, dcl_loss, nt_xent_loss, vicreg_loss

CASES = {
    "nt_xent": (nt_xent_loss, (0.5,)),
    "dcl": (dcl_loss, (0.3,)),
    "vicreg": (vicreg_loss, (25.0, 25.0, 1.0)),
    "barlow_twins": (barlow_twins_loss, (5e-3,)),
}
GLOBAL_BATCH, DIM = 12, 16


def global_embeddings(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(GLOBAL_BATCH, DIM, generator=generator), torch.randn(GLOBAL_BATCH, DIM, generator=generator)


def main(out: str) -> None:
    initialize("cpu")
    share = GLOBAL_BATCH // world_size()
    rows = slice(rank() * share, (rank() + 1) * share)
    results = {}
    for seed, (name, (loss, args)) in enumerate(CASES.items()):
        z1, z2 = global_embeddings(seed)
        local1, local2 = z1[rows].clone().requires_grad_(), z2[rows].clone().requires_grad_()
        value = global_loss(loss, local1, local2, *args)
        terms = value if isinstance(value, dict) else {"loss": value}
        terms["loss"].backward()
        results[name] = {"terms": {k: v.item() for k, v in terms.items()}, "grad1": local1.grad, "grad2": local2.grad}
    results["global_mean"] = global_mean(global_embeddings(len(CASES))[0][rows])  # DINO's center
    torch.save(results, f"{out}/rank{rank()}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
