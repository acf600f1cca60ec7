"""What grpo.py and rloo.py share: critic-free RL on TRL's ``GRPOTrainer`` / ``RLOOTrainer``.

Both trainers sample ``--num_generations`` completions per prompt, score them, and take each completion's advantage
from the others of its group (GRPO: the group's mean, scaled by its std per ``--scale_rewards``; RLOO: the mean of
the *other* completions), so no value model is trained. TRL maintains the algorithms (loss types, clipping, KL to
the reference, vLLM); this module gives them what every stage of the toolkit has: prompts from every prompt
schema, formatted as ppo.py formats them (``--prompt_format``); rewards from a reward model scored as ppo.py scores
it and/or rules (:mod:`rlhfkit.rewards`); the device switch, static shapes on Gaudi, LoRA by default with a
learning rate that suits it, faults, atomic saves and the results files.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from rlhfkit.data import DatasetArguments
from rlhfkit.errors import UserError
from rlhfkit.faults import RunArguments
from rlhfkit.hpu import HPUGraphArguments, StaticShapeArguments
from rlhfkit.modelargs import FULL_LEARNING_RATE, LORA_LEARNING_RATE
from rlhfkit.rewards import PROMPT_TEXT_COLUMN, RewardArguments
from rlhfkit.sampling_args import default as sampling_default

logger = logging.getLogger(__name__)

# each script's TRL trainer kind (rlhfkit.training.TRL_TRAINERS)
KINDS = ("grpo", "rloo")

# grpo.py's --beta when not given (TRL's GRPO default is 0: no reference, no KL term). TRL's 0 goes with its 1e-6
# learning rate; at this toolkit's LoRA rate the policy found the reward model's blind spots instead: from one toy
# SFT model, 960 episodes, two of three seeds drifted (one padded its answers with dots, KL from the base 133; one
# stopped ending its answers, KL 49), while 0.04 (DeepSeekMath's GRPO coefficient) kept all three at KL 4.1-4.5 for
# as much gold (docs/scripts.md). rloo.py keeps TRL's RLOO default, 0.05.
GRPO_BETA = 0.04


@dataclass
class ScriptArguments(DatasetArguments, RewardArguments, RunArguments, StaticShapeArguments, HPUGraphArguments):
    """grpo.py's and rloo.py's own flags (TRL's GRPOConfig / RLOOConfig give the rest under their own names)."""

    prompt_format: str = sampling_default("prompt_format", "auto")
    max_prompt_length: int = field(
        default=512,
        metadata={"help": "Prompts longer than this (tokens, formatted) are dropped, with a count (TRL's former "
                  "GRPOConfig flag; ppo.py's --input_max_length)."},
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use at most this many prompts."})


def learning_rate_default(namespace) -> None:
    """``--learning_rate`` when not given: ppo.py's defaults, 3e-4 with LoRA, 3e-5 for full fine-tuning
    (:data:`rlhfkit.modelargs.LORA_LEARNING_RATE`; TRL's 1e-6 barely moves a LoRA adapter). Runs on the parsed
    namespace."""
    if namespace.learning_rate is None:
        namespace.learning_rate = LORA_LEARNING_RATE if namespace.use_peft else FULL_LEARNING_RATE
        logger.info("--learning_rate %g (the default for %s; TRL's is 1e-6)", namespace.learning_rate,
                    "LoRA" if namespace.use_peft else "full fine-tuning")


def check_groups(namespace) -> None:
    """Refuse a ``--num_generations`` that does not divide the generation batch, naming the flags that make it
    (TRL's own check names only its internal ``generation_batch_size``)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    per_step = namespace.per_device_train_batch_size * world
    if namespace.generation_batch_size is not None:
        batch, made_of = namespace.generation_batch_size, "--generation_batch_size"
    else:
        steps = namespace.steps_per_generation or namespace.gradient_accumulation_steps
        batch = per_step * steps
        made_of = (f"--per_device_train_batch_size {namespace.per_device_train_batch_size} x {world} process(es) x "
                   + (f"--steps_per_generation {steps}" if namespace.steps_per_generation
                      else f"--gradient_accumulation_steps {steps}"))
    if namespace.num_generations is None or namespace.num_generations < 2:
        raise UserError(f"--num_generations {namespace.num_generations}: a group needs at least 2 completions per "
                        "prompt (each one's advantage comes from the others)")
    if batch % namespace.num_generations:
        raise UserError(f"--num_generations {namespace.num_generations} does not divide the generation batch of "
                        f"{batch} completions ({made_of}): every prompt's group must fit in one batch; pick a "
                        f"divisor of {batch} or change the batch")


def make_parser(config_cls, doc: str, defaults: dict | None = None):
    """A critic-free script's parser: :class:`ScriptArguments`, the model's, the device switch and TRL's config,
    with the toolkit's learning-rate default (and the script's ``defaults``) and the group check before TRL's config
    validates."""
    from rlhfkit.device import configure_training_args
    from rlhfkit.training import trainer_parser

    def prepare(namespace):
        learning_rate_default(namespace)
        check_groups(namespace)
        configure_training_args(namespace, namespace)

    parser = trainer_parser(ScriptArguments, config_cls, doc, prepare=prepare,
                            defaults={"learning_rate": None, **(defaults or {})})
    for action in parser._actions:
        if action.dest == "learning_rate":
            action.help = (f"AdamW learning rate; default {LORA_LEARNING_RATE:g} with LoRA, {FULL_LEARNING_RATE:g} "
                           "for full fine-tuning (TRL's 1e-6 barely moves a LoRA adapter).")
        elif action.dest == "beta" and defaults and "beta" in defaults:
            action.help = ("KL coefficient of the KL to the reference (with LoRA: the adapter-disabled policy) in the "
                           "loss. TRL's default, 0, loads no reference; at this toolkit's learning rates the policy "
                           "then drifted to what the reward model over-scores.")
    return parser


def load_prompts(script_args: ScriptArguments, tokenizer):
    """The prompt dataset TRL trains on: ``prompt`` (the text the policy sees, formatted as ppo.py formats it,
    without a BOS the tokenizer adds itself, since TRL encodes text prompts with special tokens),
    ``prompt_text`` (the prompt as plain text, for ``f(prompt, response)`` rules) and ``tools`` where the data has
    them. Prompts over ``--max_prompt_length`` tokens are dropped, with a count."""
    import datasets

    from rlhfkit import schemas
    from rlhfkit.sampling import load_rl_prompts

    loaded = load_rl_prompts(script_args, tokenizer, script_args.prompt_format, script_args.max_prompt_length,
                             "--max_prompt_length", script_args.max_train_samples)
    columns = {"prompt": [schemas.strip_bos(tokenizer, text) for text in loaded.texts],
               PROMPT_TEXT_COLUMN: loaded.plain}
    if loaded.tools is not None:
        columns["tools"] = loaded.tools
    logger.info("%d prompts", len(loaded.texts))
    return datasets.Dataset.from_dict(columns)


def check_vllm(training_args, info) -> None:
    """``--use_vllm`` (TRL's vLLM generation) needs CUDA and the optional vllm package: refused in one line
    otherwise, before any weights load."""
    import importlib.util

    if not training_args.use_vllm:
        return
    if info.type != "cuda":
        raise UserError(f"--use_vllm generates with vLLM, which runs on CUDA only (this run is on {info.type}): drop "
                        "--use_vllm or run on an NVIDIA GPU")
    if importlib.util.find_spec("vllm") is None:
        raise UserError("--use_vllm: vLLM is not installed: pip install -r requirements-vllm.txt (TRL's vllm extra)")
    logger.info("generation with vLLM (--vllm_mode %s)", training_args.vllm_mode)


def episodes(trainer) -> int:
    """Completions generated in the run so far: each optimizer step trains on ``per_device_train_batch_size x
    processes x gradient_accumulation_steps`` of them, each generated once and used ``--num_iterations`` times."""
    args = trainer.args
    used = trainer.state.global_step * args.per_device_train_batch_size * args.gradient_accumulation_steps
    return round(used * trainer.accelerator.num_processes / max(1, getattr(args, "num_iterations", 1)))


def run(kind: str, script_args: ScriptArguments, model_args, device_args, training_args) -> dict:
    """Train with TRL's trainer for ``kind`` ("grpo" or "rloo"); the results as written to ``all_results.json``."""
    import torch

    from rlhfkit import device, models, rewards
    from rlhfkit.results import write_results
    from rlhfkit.training import make_trainer, open_run, train_and_save

    script_args.check()
    if script_args.reward_model_name:
        models.check_reward_model(script_args.reward_model_name, training_args.trust_remote_code)
    rules = [rewards.load_rule(spec) for spec in script_args.reward_function or []]  # a bad import fails first
    info, model_name, tokenizer_name, tokenizer = open_run(training_args, device_args, script_args, model_args,
                                                           "the trained policy")
    check_vllm(training_args, info)
    prompts = load_prompts(script_args, tokenizer)
    rewards.probe(rules, prompts[0]["prompt"], prompts[0][PROMPT_TEXT_COLUMN])
    model = models.load_causal_lm(model_name, trust_remote_code=training_args.trust_remote_code,
                                  allow_pickle=model_args.allow_pickle, merge_adapter=True)
    models.check_vocabulary(model, tokenizer, model_name, tokenizer_name)
    stop_ids = models.stop_token_ids("eos", tokenizer, model.generation_config)
    dtype = torch.bfloat16 if training_args.bf16 else torch.float16 if training_args.fp16 else torch.float32
    functions = rewards.build(script_args, rules, tokenizer, stop_ids, dtype, training_args.device,
                              training_args.trust_remote_code, model_args.allow_pickle,
                              batch_size=training_args.per_device_train_batch_size * training_args.steps_per_generation)
    weights = training_args.reward_weights
    if weights is not None and len(weights) != len(functions):
        raise UserError(f"--reward_weights has {len(weights)} values for {len(functions)} rewards "
                        f"({rewards.describe(functions, None)}): give one per reward, the reward model first")
    peft_config = model_args.lora_config("CAUSAL_LM")
    trainer, shapes = make_trainer(kind, info, training_args, script_args, fuse_lora=model_args.fuse_lora,
                                   model=model, reward_funcs=functions,
                                   train_dataset=prompts, processing_class=tokenizer, peft_config=peft_config)
    logger.info("%s on %s: %d prompts x %d completions each, %s trainable of %s parameters (%s), loss %s, beta %g, "
                "learning rate %g; rewards: %s", kind.upper(), info.type, len(prompts), training_args.num_generations,
                f"{models.count_parameters(trainer.model, trainable_only=True):,}",
                f"{models.count_parameters(trainer.model):,}", "LoRA" if peft_config else "full fine-tuning",
                getattr(training_args, "loss_type", kind), training_args.beta, training_args.learning_rate,
                rewards.describe(functions, weights))

    results = {"device": device.describe(info), "model": model_name, "use_peft": bool(peft_config),
               "rewards": rewards.describe(functions, weights)}
    metrics = train_and_save(trainer, training_args, script_args)
    done = episodes(trainer)
    metrics["train_episodes"] = done
    if metrics.get("train_runtime"):
        metrics["train_episodes_per_second"] = done / metrics["train_runtime"]
    results.update(metrics)
    results.update(shapes.results())
    write_results(training_args.output_dir, "all", results)
    logger.info("done: %d episodes in %.0fs (%.2f episodes/s); last reward %s", done, metrics.get("train_runtime", 0),
                metrics.get("train_episodes_per_second", 0), last_logged(trainer.state.log_history, "reward"))
    return results


def last_logged(log_history: list[dict], key: str) -> str:
    values = [entry[key] for entry in log_history if key in entry]
    return f"{values[-1]:.3f}" if values else "not logged"
