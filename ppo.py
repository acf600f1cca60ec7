#!/usr/bin/env python
"""PPO for RLHF (stage 5 of the pipeline) on our own engine (``rlhfkit.ppo``): TRL no longer ships a PPOTrainer.

The policy starts from a full or merged SFT model or a PEFT adapter folder; by default it trains a LoRA
adapter whose disabled state is the reference (one copy of the base weights). Given a reward model that reads the
policy's token ids, the critic starts from it (with LoRA: the reward model's weights plus an adapter, whose
disabled state scores); with a rule, a value head on the policy trunk.
Scores come from a reward model (``--reward_model_name``; its own tokenizer is handled) or a rule
(``--reward_function``). Prompts come from any prompt schema the toolkit reads (the ``query`` JSON of
optimum-habana's ``examples/trl`` data included); by default the ``data/rl`` split of the embedded toy task.

    PT_HPU_LAZY_MODE=1 python ppo.py --model_name_or_path ./sft_sanity_merged --reward_model_name ./rm_sanity_merged \\
        --tokenizer_name_or_path google/gemma-3-270m --output_dir ./ppo_sanity --batch_size 2 --mini_batch_size 1 \\
        --gradient_accumulation_steps 1 --ppo_epochs 1 --steps 64 --input_max_length 256 --output_max_length 64 \\
        --learning_rate 1.4e-5 --early_stopping True --batched_gen True --max_train_samples 256

Multi-device: ``accelerate launch --multi_gpu --num_processes N ppo.py ...`` (DDP; on a machine without GPUs
the same command starts N CPU processes with the gloo backend; ``accelerate launch --cpu`` starts only one
without MPI), or ``--config_file configs/accelerate/ddp.yaml`` (DDP only: the engine is not wired for FSDP or
DeepSpeed yet). Writes the policy (merged, or the adapter
with ``--save_merged False``) and tokenizer to ``--output_dir``, with ``training_log.csv`` (every episode),
TensorBoard logs, ``trainer_state.json``, ``all_results.json`` and ``ppo_curves.png``.
"""

from __future__ import annotations

import logging
import os

from rlhfkit.cli import make_parser, script_cli
from rlhfkit.data import DatasetArguments
from rlhfkit.device import DeviceArguments, PrecisionArguments
from rlhfkit.errors import UserError
from rlhfkit.modelargs import ModelArguments
from rlhfkit.ppo.config import PPOArguments

logger = logging.getLogger("ppo")


def policy_tokenizer(name: str, trust_remote_code: bool, stop_ids_of):
    """The policy's tokenizer, left-padding, with a pad token distinct from every stop token (one is added
    when the tokenizer has none, or pads with EOS: masks built from pad ids would otherwise hide EOS)."""
    from rlhfkit import models

    tokenizer = models.load_tokenizer(name, trust_remote_code, padding_side="left")
    stops = stop_ids_of(tokenizer)
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id in stops:
        reason = "has no pad token" if tokenizer.pad_token_id is None else "pads with a stop token"
        tokenizer.add_special_tokens({"pad_token": "<|ppo_pad|>"})
        logger.warning("the tokenizer %s: added a distinct pad token %r (id %d)", reason, tokenizer.pad_token,
                       tokenizer.pad_token_id)
    return tokenizer


def load_prompts(data_args: DatasetArguments, args: PPOArguments, tokenizer):
    """(prompt texts, token ids of the formatted prompts), prompts over --input_max_length dropped."""
    from rlhfkit.sampling import load_rl_prompts

    loaded = load_rl_prompts(data_args, tokenizer, args.prompt_format, args.input_max_length, "--input_max_length",
                             args.max_train_samples)
    return loaded.plain, loaded.ids


def validate(args: PPOArguments, model_args: ModelArguments) -> str | None:
    """Everything checkable before a model loads; returns the checkpoint to resume from, if any."""
    args.validate()
    from rlhfkit import checkpoints, faults, models
    from rlhfkit.ppo.trainer import STATE_FILE

    if args.reward_model_name:
        models.check_reward_model(args.reward_model_name, args.trust_remote_code)
    if model_args.model_name_or_path:
        models.check_model_source(model_args.model_name_or_path, "policy")
        if (model_args.use_peft and not args.save_merged and models.is_adapter(model_args.model_name_or_path)):
            raise UserError("--save_merged False with an adapter folder as the policy: the new adapter would sit on the "
                            "merged SFT model, not on the base its config names; merge the SFT adapter first "
                            "(merge_peft_adapter.py) or keep --save_merged True")
    faults.check_output_dir(args.output_dir, args.overwrite_output_dir, bool(args.resume_from_checkpoint))
    return checkpoints.resolve(args.resume_from_checkpoint, args.output_dir, STATE_FILE)


def save_policy(trainer, args: PPOArguments, model_args: ModelArguments, tokenizer) -> None:
    """The final policy into output_dir, atomically: merged full model (default) or the LoRA adapter."""
    from rlhfkit import io, sharding

    acc = trainer.accelerator
    acc.wait_for_everyone()
    with sharding.gathered(acc, trainer.model):  # FSDP2 / ZeRO-3: the whole weights, into one model
        if acc.is_main_process:
            policy = acc.unwrap_model(trainer.model).policy
            if model_args.use_peft and args.save_merged:
                policy = policy.merge_and_unload()
            weights = sharding.whole_weights(acc, policy)
            with io.staging_dir(args.output_dir) as staging:
                policy.save_pretrained(staging, state_dict=weights, safe_serialization=True)
                tokenizer.save_pretrained(staging)
    acc.wait_for_everyone()
    if not acc.is_main_process:
        return
    logger.info("saved the %s policy to %s", "LoRA adapter" if model_args.use_peft and not args.save_merged
                else "full", args.output_dir)


def write_outputs(trainer, args: PPOArguments, summary: dict, info) -> None:
    from rlhfkit import device
    from rlhfkit.io import write_json
    from rlhfkit.ppo.plots import plot_curves
    from rlhfkit.results import write_results

    if not trainer.accelerator.is_main_process:
        return
    write_json(os.path.join(args.output_dir, "trainer_state.json"),
               {"global_step": trainer.step_index, "episode": trainer.episodes_done, "log_history": trainer.log_history})
    summary = {**summary, "num_processes": trainer.world, "device": device.describe(info)}
    write_results(args.output_dir, "train", summary)
    write_results(args.output_dir, "all", summary)
    plot_curves(trainer.log_history, os.path.join(args.output_dir, "ppo_curves.png"))


def make_scorer(args: PPOArguments, model_args: ModelArguments, module, reward_tok, tokenizer, dtype, target, info):
    """(the scorer of responses, whether it shares the critic's weights): the reward model, or the rule.

    With LoRA, a critic on the reward model shares its weights: scores come from it with the adapter disabled
    (not under HPU graphs, which cannot follow the adapter being switched)."""
    from rlhfkit import scoring

    pad_multiple = args.input_max_length + args.output_max_length if args.pad_max else None
    shared = module.critic is not None and model_args.use_peft and not (args.use_hpu_graphs and info.type == "hpu")
    if shared:
        return scoring.RewardModelScorer(module.critic, reward_tok, tokenizer, batch_size=args.batch_size,
                                         adapter_disabled=True, pad_multiple=pad_multiple), True
    if args.reward_model_name:
        reward_model, reward_tok = scoring.load_reward_model(
            args.reward_model_name, args.reward_tokenizer_name, tokenizer, dtype, target, args.trust_remote_code,
            model_args.allow_pickle)
        scoring.wrap_in_hpu_graph(reward_model, info, args.use_hpu_graphs)
        return scoring.RewardModelScorer(reward_model, reward_tok, tokenizer, batch_size=args.batch_size,
                                         pad_multiple=pad_multiple), False
    return scoring.load_rule(args.reward_function), False


def place_for_inference(args: PPOArguments, module, ref_model, target, info):
    """(the reference model on the device, HPU-graph wrapped on Gaudi; the policy's graph-wrapped generator or
    None). On Gaudi with HPU graphs, generation runs through a graph-wrapped view of the transformers model (under
    PEFT's wrapper, whose generate calls it); the training forward and the adapter-disabled reference pass run
    the model object itself, outside any captured graph."""
    from rlhfkit import hpu
    from rlhfkit.ppo import policy as policy_lib

    if ref_model is not None:
        ref_model.to(target)
        ref_model = hpu.wrap_for_inference(ref_model, info, args.use_hpu_graphs, "the frozen reference")
    if not (args.use_hpu_graphs and info.type == "hpu"):
        return ref_model, None
    module.policy.to(target)
    return ref_model, hpu.wrap_for_inference(hpu.inference_view(policy_lib.unwrap_peft(module.policy)), info, True,
                                             "the policy's generation (static KV cache)")


def describe_run(trainer, args: PPOArguments, model_args: ModelArguments, info, shared: bool, why: str) -> None:
    """The run's one summary line (device, processes, steps, rate, parameters, reference, critic, scores), and
    what all_results.json records of the critic."""
    from rlhfkit import models

    module, processes = trainer.accelerator.unwrap_model(trainer.model), trainer.world
    trainable, total = models.count_parameters(module, True), models.count_parameters(module)
    critic = {"head": "a value head on the policy trunk",
              "reward": "the reward model + LoRA, its adapter-disabled self scoring" if shared else
              "a trained copy of the reward model"}[args.value_model]
    trainer.describe = {"value_model": args.value_model, "critic": critic, "learning_rate": args.learning_rate,
                        "use_peft": model_args.use_peft}
    logger.info(
        "PPO on %s x %d process(es): %d prompts, %d steps of %d episodes (%d per process), %d PPO epochs, "
        "learning rate %g, %s trainable of %s parameters, reference: %s, critic: %s (%s), scores: %s",
        info.type, processes, len(trainer.prompts), trainer.total_steps, args.batch_size * processes,
        args.batch_size, args.ppo_epochs, args.learning_rate, f"{trainable:,}", f"{total:,}",
        "adapter disabled" if trainer.ref_model is None else "frozen copy", critic, why,
        args.reward_model_name or args.reward_function,
    )


def main(args: PPOArguments, model_args: ModelArguments, data_args: DatasetArguments, device_args: DeviceArguments,
         precision: PrecisionArguments):
    resume = validate(args, model_args)
    import torch
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from transformers import set_seed

    from rlhfkit import faults, hpu, models, sharding
    from rlhfkit.ppo import policy as policy_lib
    from rlhfkit.ppo.trainer import PPOTrainer

    info, dtype, _ = hpu.inference_setup(device_args, precision, args)  # args: PPO's --use_hpu_graphs
    # a DeepSpeed / FSDP launch on a machine without GPUs (configs/accelerate/cpu_*.yaml) needs its process group
    # started first; cpu=True would turn both off
    sharded_cpu = info.type == "cpu" and sharding.start_cpu_processes()
    # DDP's gradients as views into its all-reduce buckets: torch's default keeps a second, bucketed copy of every
    # gradient (measured: one gradient-sized copy more per process)
    accelerator = Accelerator(cpu=info.type == "cpu" and not sharded_cpu,
                              kwargs_handlers=[DistributedDataParallelKwargs(gradient_as_bucket_view=True)])
    if not accelerator.is_main_process:  # one process speaks; the others only warn
        logging.getLogger().setLevel(logging.WARNING)
    set_seed(args.seed)  # the same initial weights everywhere (LoRA, value head): FSDP2 shards each process's own

    name = models.resolve_name(model_args.model_name_or_path)
    tokenizer = policy_tokenizer(model_args.tokenizer_name_or_path or name, args.trust_remote_code,
                                 lambda tok: models.stop_token_ids(args.stop_token, tok))
    prompts, queries = load_prompts(data_args, args, tokenizer)
    total_steps = args.resolve_steps(len(prompts), accelerator.num_processes)

    reward_tok = None
    if args.reward_model_name:
        reward_tok = models.load_reward_tokenizer(args.reward_model_name, args.reward_tokenizer_name, tokenizer,
                                                  args.trust_remote_code)
    args.value_model, why = policy_lib.resolve_value_model(args.value_model, reward_tok, tokenizer)
    slow_rate = args.resolve_learning_rate(model_args.use_peft)
    if slow_rate:
        logger.warning(slow_rate)
    from accelerate.utils import DistributedType

    deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED  # keeps its own float32 master weights
    trained_dtype = policy_lib.master_dtype(dtype, model_args.use_peft, deepspeed)
    if trained_dtype != dtype:
        logger.info("full fine-tuning in %s: float32 weights (every update kept), %s forward passes (torch.autocast)",
                    str(dtype).removeprefix("torch."), str(dtype).removeprefix("torch."))
    elif not model_args.use_peft and not deepspeed and dtype == torch.float16:
        logger.warning(policy_lib.half_precision_warning(dtype, args.learning_rate))
    module, ref_model = policy_lib.build(model_args, args, dtype, tokenizer, args.reward_model_name, trained_dtype)
    stop_ids = models.stop_token_ids(args.stop_token, tokenizer, module.policy.generation_config)
    scorer, shared = make_scorer(args, model_args, module, reward_tok, tokenizer, dtype, accelerator.device, info)
    ref_model, generator = place_for_inference(args, module, ref_model, accelerator.device, info)

    if accelerator.process_index:  # sampling differs per process (rank 0 goes on as a single process would)
        set_seed(args.seed + accelerator.process_index)
    faults.check_disk_space(args.output_dir, faults.needed_bytes(module))
    if accelerator.is_main_process:  # only now: a refused run leaves no folder behind
        os.makedirs(args.output_dir, exist_ok=True)
    accelerator.wait_for_everyone()
    trainer = PPOTrainer(args, accelerator, module, ref_model, scorer, tokenizer, prompts, queries, stop_ids,
                         total_steps, generator, autocast_dtype=dtype if trained_dtype != dtype else None,
                         fuse_lora=model_args.fuse_lora)
    if resume:
        trainer.load_checkpoint(resume)
    describe_run(trainer, args, model_args, info, shared, why)
    torch.set_grad_enabled(True)
    summary = trainer.train()
    save_policy(trainer, args, model_args, tokenizer)
    write_outputs(trainer, args, summary, info)
    logger.info("done: %s", {k: round(v, 4) if isinstance(v, float) else v for k, v in summary.items()})
    return summary  # the processes end together and destroy their group in script_cli


def build_parser():
    return make_parser((PPOArguments, ModelArguments, DatasetArguments, DeviceArguments, PrecisionArguments),
                       description=__doc__)


cli = script_cli(build_parser, main)


if __name__ == "__main__":
    cli()
