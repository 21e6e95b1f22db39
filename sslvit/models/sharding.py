"""Fully sharded data parallelism (FSDP2: ``torch.distributed.fsdp.fully_shard``) for sslvit's networks, as
Lightning's ``ModelParallelStrategy`` asks: the objective shards itself in ``configure_model`` and Lightning
then builds the optimiser over the sharded parameters, saves and loads them (``torch.distributed.checkpoint``).

Each network is sharded the way torchtitan and Lightning's FSDP2 guide shard a Transformer:

    every timm ``Block`` and every ``DINOHead``   its own unit: gathered just before its forward, freed after
    the network itself (``shard_net_``'s root)   what is left: patch embedding, tokens, position table, norms,
                                                 MAE's decoder embedding and mask token, DINOv2's mask token

Every parameter thus becomes a ``DTensor`` holding 1 / n of its rows on each of n ranks, the optimiser's
moments too.  DINO's and DINOv2's teacher is sharded exactly as its student, unit by unit, so teacher and
student parameters have the same placements and the EMA (``models.ema.ema_update_``) runs on the local
shards with no communication and no gathered copy of either network.  The teacher runs under ``no_grad``
and never meets a backward pass, so its root is resharded right after its forward (FSDP2's root otherwise
keeps its parameters gathered for the backward).

A network called through a method other than ``forward`` (MAE's ``Encoder.forward_visible``, DINOv2's
``global_tokens``) names it in ``methods``: FSDP2 hooks only ``forward`` unless told
(``register_fsdp_forward_method``).

The mesh is Lightning's: ``(data_parallel, tensor_parallel)``, by default (nodes, GPUs per node).  sslvit
has no tensor parallelism, so it shards over the second dimension and replicates over the first (HSDP:
each node holds a whole copy, spread over its GPUs; gradients are reduce-scattered within a node and
all-reduced across nodes).  ``data_parallel_size=1, tensor_parallel_size=<all ranks>`` shards over every
rank instead.  Either way every rank reads its own data (``data.datamodule`` splits by global rank).
"""

from collections.abc import Sequence

from torch import nn

from sslvit.models.heads import DINOHead


def shard_units(net: nn.Module) -> list[nn.Module]:
    """The modules of ``net`` that become FSDP units of their own: every timm Block and every DINO head."""
    from timm.models.vision_transformer import Block

    return [m for m in net.modules() if m is not net and isinstance(m, (Block, DINOHead))]


def shard_net_(net: nn.Module, mesh, methods: Sequence[str] = (), frozen: bool = False) -> None:
    """Shard ``net`` in place over ``mesh`` (a ``DeviceMesh``): each unit of ``shard_units``, then the rest
    as one root unit.  ``frozen``: a network that only runs forward (the EMA teacher), resharded after it.
    Already sharded: nothing to do (Lightning may call ``configure_model`` again)."""
    from torch.distributed.fsdp import FSDPModule, fully_shard, register_fsdp_forward_method

    if isinstance(net, FSDPModule):
        return
    for unit in shard_units(net):
        fully_shard(unit, mesh=mesh)
    # None: FSDP2's own choice (a root keeps its parameters gathered from forward to backward)
    fully_shard(net, mesh=mesh, reshard_after_forward=True if frozen else None)
    for name in methods:
        register_fsdp_forward_method(net, name)


def unsharded_parameters(module: nn.Module) -> list[str]:
    """Names of the parameters of ``module`` that are not ``DTensor``s: under FSDP2 a trainable one would not
    have its gradient reduced over ranks, so the ranks' copies would drift apart."""
    from torch.distributed.tensor import DTensor

    return [name for name, p in module.named_parameters() if not isinstance(p, DTensor)]


def check_all_sharded(module: nn.Module) -> None:
    """Our bug, not the user's, when a parameter escaped ``shard_net_``: stop before the first step."""
    left = unsharded_parameters(module)
    if left:
        raise RuntimeError(f"{type(module).__name__}: parameters not sharded by configure_model: {left[:6]}")


def is_sharded(module: nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in module.parameters())


def gathered_copy(encoder: nn.Module) -> nn.Module:
    """A plain, unsharded copy of a sharded ``Encoder`` (itself when it is not sharded), for evaluation during
    training (the k-NN monitor): its forward then runs no collective, so ranks may evaluate different numbers
    of batches.  Every rank must call it: each parameter is gathered once, in the same order on every rank."""
    from torch.distributed.tensor import DTensor

    if not is_sharded(encoder):
        return encoder
    from sslvit.models.encoder import Encoder

    full = {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in encoder.state_dict().items()}
    copy = Encoder(encoder.cfg, num_classes=encoder.vit.num_classes).to(next(iter(full.values())).device)
    copy.load_state_dict(full)
    return copy.train(encoder.training)
