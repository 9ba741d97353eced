"""A few AdamW steps of TinyTransformer with FSDP2 (`fully_shard`) on CPU processes, or the same steps in one process.

    torchrun --nproc_per_node 2 tests/launched/train_with_fully_shard.py OUTPUT_DIR   # FSDP over gloo, batch split by rank
    python tests/launched/train_with_fully_shard.py OUTPUT_DIR                         # one process, the same global batches

tests/test_distributed.py runs both and compares the saved weights. The Trainer cannot run FSDP on a CPU (with
`use_cpu` Accelerate picks MULTI_CPU, i.e. DDP; see README.md, "Distributed training and mixed precision"), so this
does by hand what Accelerate does with train/accelerate/fsdp.yaml: every module whose class the file names in
`fsdp_transformer_layer_cls_to_wrap` becomes its own shard unit, the tied embedding and output projection another,
then the whole model the root unit. At the end the full state dict is gathered to rank 0 and saved as one ordinary
`model.safetensors` by `save_pretrained`, which `from_pretrained` loads like any other checkpoint.
"""

import argparse
import gc
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import fully_shard

from hf_tiny_transformer import TinyTransformerConfig, TinyTransformerForConditionalGeneration
from hf_tiny_transformer_train.data import build_tokenizer, generate_examples

FSDP_CONFIG = Path(__file__).resolve().parents[2] / "train" / "accelerate" / "fsdp.yaml"


def wrap_policy() -> tuple[list[str], bool]:
    """The layer class names that fsdp.yaml makes shard units, and its reshard_after_forward."""
    fsdp_config = yaml.safe_load(FSDP_CONFIG.read_text())["fsdp_config"]
    class_names = [name.strip() for name in fsdp_config["fsdp_transformer_layer_cls_to_wrap"].split(",")]
    return class_names, bool(fsdp_config["fsdp_reshard_after_forward"])


def shard(model: torch.nn.Module) -> None:
    """Apply fsdp.yaml's policy in place as Accelerate (1.15, 1.16) applies it to a model with tied embeddings, as
    this one is: each named layer class a unit (innermost first); then the input embedding with the output projection,
    one unit kept unsharded between forward and backward; then the root."""
    class_names, reshard_after_forward = wrap_policy()
    layers = [module for module in model.modules() if type(module).__name__ in class_names]
    if not layers:
        raise ValueError(f"no module of the classes {class_names} named in {FSDP_CONFIG}")
    for layer in layers:
        fully_shard(layer, reshard_after_forward=reshard_after_forward)
    fully_shard([model.get_input_embeddings(), model.get_output_embeddings()], reshard_after_forward=False)
    fully_shard(model, reshard_after_forward=reshard_after_forward)


def global_batches(tokenizer, steps: int, global_batch: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """`steps` padded batches of the copy task (1-8 integers), the same in every process and every run."""
    examples = list(generate_examples("copy", "train", steps * global_batch, 1, 8, seed=seed))
    batches = []
    for start in range(0, len(examples), global_batch):
        rows = examples[start : start + global_batch]
        encoded = tokenizer(
            [row["source"] for row in rows], text_target=[row["target"] for row in rows], padding=True,
            return_tensors="pt",
        )  # fmt: skip
        labels = encoded["labels"].masked_fill(encoded["labels"] == tokenizer.pad_token_id, -100)
        batches.append(
            {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"], "labels": labels}
        )
    return batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--global_batch", type=int, default=16, help="examples per optimizer step, all ranks together")
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        dist.init_process_group("gloo")
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    if args.global_batch % world_size:
        raise ValueError(f"--global_batch {args.global_batch} must be a multiple of the {world_size} processes")

    tokenizer = build_tokenizer()
    config = TinyTransformerConfig(
        vocab_size=len(tokenizer), d_model=32, encoder_layers=2, decoder_layers=2, num_attention_heads=4, ffn_dim=64,
        dropout=0.0, position_embedding_type="learned", max_position_embeddings=16, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.bos_token_id,
    )  # fmt: skip
    torch.manual_seed(args.seed)  # the same initial weights in every process: nothing needs broadcasting
    model = TinyTransformerForConditionalGeneration(config).train()
    full_parameters = sum(parameter.numel() for parameter in model.parameters())
    if distributed:
        shard(model)
    # After sharding: the optimizer must hold the sharded parameters (DTensors), each rank updating its own shard.
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=0.01)

    losses = []
    per_rank = args.global_batch // world_size
    for batch in global_batches(tokenizer, args.steps, args.global_batch, args.seed):
        # Padded to the global batch's longest row, then split: each rank sees exactly its rows of the same tensors.
        local = {name: tensor[rank * per_rank : (rank + 1) * per_rank] for name, tensor in batch.items()}
        tokens = int((batch["labels"] != -100).sum())
        # The loss over this rank's tokens divided by the global token count, times the world size because FSDP
        # averages the gradients over ranks: the sum is the global mean loss whatever the padding (as the Trainer
        # does with num_items_in_batch and average_tokens_across_devices).
        loss = model(**local, num_items_in_batch=tokens).loss * world_size
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # the Trainer's default max_grad_norm
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        global_loss = loss.detach() / world_size
        if distributed:
            dist.all_reduce(global_loss)
        losses.append(global_loss.item())

    local_parameters = sum(
        (parameter.to_local() if distributed else parameter).numel() for parameter in model.parameters()
    )
    # Every rank takes part in the gather; with cpu_offload only rank 0 receives the tensors.
    state_dict = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    report = {
        "rank": rank,
        "world_size": world_size,
        "sharded": distributed,
        "full_parameters": full_parameters,
        "local_parameters": local_parameters,
        "losses": losses,
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        # An unwrapped model of the same config holds the gathered weights; save_pretrained writes the ordinary
        # folder (one model.safetensors, config.json, the source for remote code).
        plain = TinyTransformerForConditionalGeneration(config)
        plain.load_state_dict(state_dict)
        plain.save_pretrained(args.output_dir)
    (args.output_dir / f"rank{rank}.json").write_text(json.dumps(report))
    if distributed:
        # Free the sharded model and its optimizer state while the process group is still registered, so that the
        # group's destructor runs in destroy_process_group, which releases the GIL, and not in a destructor that
        # holds it while gloo's worker threads may need it (a teardown deadlock; pytorch/pytorch#56297).
        del model, optimizer
        gc.collect()
        dist.destroy_process_group()


if __name__ == "__main__":
    gc.freeze()  # as train/train.py: the imports' objects out of the cyclic collector's sight
    main()
